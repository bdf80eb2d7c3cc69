"""``python -m kvplane_tools``: the ``kvplane`` command line with the tools' commands, no install needed."""

import sys

from kvplane.cli import main
from kvplane_tools.commands import COMMANDS

if __name__ == "__main__":
    sys.exit(main(commands=COMMANDS))
