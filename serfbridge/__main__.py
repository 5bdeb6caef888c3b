"""``python -m serfbridge``."""

import sys

from serfbridge.cli import main

sys.exit(main(end_process=True))
