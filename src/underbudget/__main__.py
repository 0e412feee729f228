"""``python -m underbudget``: the same command line as the ``underbudget`` script."""

import sys

from .cli import main

sys.exit(main())
