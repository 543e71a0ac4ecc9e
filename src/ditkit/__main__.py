"""`python -m ditkit ...` (and `torchrun -m ditkit ...`) runs the CLI."""

import sys

from ditkit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
