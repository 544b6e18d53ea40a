"""``python -m jaxviz.cli``: the same as the ``jaxviz`` command."""

import sys

from jaxviz.cli import main

sys.exit(main())
