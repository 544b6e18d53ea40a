"""The one exception type jaxviz raises for bad input a person can fix."""


class JaxvizError(ValueError):
    """Bad input: an unknown name, an unreadable file, an index out of range.

    The message is one line that says what was wrong and what to do. The CLI prints it
    and exits with status 2; library callers can catch it like any ``ValueError``.
    """


def unknown(kind: str, name: object, valid: "list[str] | tuple[str, ...]", where: str = "") -> JaxvizError:
    """Error for an unknown name that lists the valid ones (``where``: e.g. " in vgg16")."""
    plural = kind if kind.endswith("s") else f"{kind}s"
    listed = ", ".join(show(v, 80) for v in valid)
    return JaxvizError(f"unknown {kind} {show(repr(name), 160)}{where}; valid {plural}: {show(listed, 4000)}")


# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators and bidi overrides a
# terminal or log viewer would act on instead of showing.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def show(text: object, limit: int = 120) -> str:
    """Any text that came from a file (a layer, model or file name), made safe to print: control
    characters written as escapes (``\\x1b``, ``\\n``), so a terminal never acts on them and a message
    stays one line, and cut to ``limit`` characters with an ellipsis in the middle."""
    s = str(text).translate(_CONTROL)
    if len(s) > limit:
        half = max(1, (limit - 1) // 2)
        s = f"{s[:half]}…{s[-half:]}"
    return s


def one_line(text: object, limit: int = 2000) -> str:
    """A whole message as one printable line: newlines become spaces, other control characters are
    escaped, and it is cut to ``limit`` characters."""
    return show(" ".join(str(text).splitlines()), limit)


# What a terminal may receive from jaxviz: text, newlines, tabs and the carriage return a progress bar
# redraws with; every other control character (ESC starts the sequences that clear a screen or set a
# window title, BEL, ...) is shown as an escape instead.
TERMINAL = {c: e for c, e in _CONTROL.items() if c not in (ord("\n"), ord("\r"), ord("\t"))}


class EscapingStream:
    """A text stream that writes through :data:`TERMINAL`: whatever a name from a file holds, the
    terminal shows it and never acts on it. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text.translate(TERMINAL))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
