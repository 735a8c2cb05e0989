"""``python -m ivfuse.cli ...`` = the ``ivfuse`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
