"""``python -m ivfuse ...`` = the ``ivfuse`` command (also what ``torchrun -m ivfuse train ...`` runs)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
