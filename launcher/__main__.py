"""`python -m launcher` is the `bulk-export` command."""

import sys

from launcher.cli import main

sys.exit(main())
