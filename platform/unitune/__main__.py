"""``python -m unitune``: the same as the ``unitune`` console script."""

import sys

from unitune.cli import main

sys.exit(main())
