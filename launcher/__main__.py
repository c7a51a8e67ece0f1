"""`python -m launcher` is the `bulk-export` command."""

import sys

from launcher.cli.main import main

# Guarded: the pipeline's child processes import this module again.
if __name__ == "__main__":
    sys.exit(main())
