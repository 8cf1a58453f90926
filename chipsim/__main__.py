"""`python -m chipsim ...`: the same as the `chipsim` command."""

import sys

from chipsim.cli import main

sys.exit(main())
