"""``python -m kvplane``: the same command line as the ``kvplane`` console script."""

import sys

from kvplane.cli import main

if __name__ == "__main__":
    sys.exit(main())
