"""`python -m prunekit` (and `torchrun -m prunekit ...`): the command line."""

import sys

from prunekit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
