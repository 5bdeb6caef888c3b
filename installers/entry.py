"""Entry script of the frozen serfbridge (PyInstaller runs this as ``__main__``)."""

import sys

from serfbridge.cli import main

sys.exit(main(end_process=True))
