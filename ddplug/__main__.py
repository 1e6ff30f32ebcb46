"""``python -m ddplug``: the ``ddplug`` command."""

import sys

from ddplug.cli import main

if __name__ == "__main__":
    sys.exit(main())
