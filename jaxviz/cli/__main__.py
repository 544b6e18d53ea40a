"""``python -m jaxviz.cli``: the same as the ``jaxviz`` command."""

from jaxviz.cli import entry

entry()
