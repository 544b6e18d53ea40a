"""The one exception type jaxviz raises for bad input a person can fix."""


class JaxvizError(ValueError):
    """Bad input: an unknown name, an unreadable file, an index out of range.

    The message is one line that says what was wrong and what to do. The CLI prints it
    and exits with status 2; library callers can catch it like any ``ValueError``.
    """


def unknown(kind: str, name: object, valid: "list[str] | tuple[str, ...]", where: str = "") -> JaxvizError:
    """Error for an unknown name that lists the valid ones (``where``: e.g. " in vgg16")."""
    plural = kind if kind.endswith("s") else f"{kind}s"
    return JaxvizError(f"unknown {kind} {name!r}{where}; valid {plural}: {', '.join(map(str, valid))}")
