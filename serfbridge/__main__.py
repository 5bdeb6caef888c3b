"""``python -m serfbridge``."""

import sys

from serfbridge.cli import main

sys.exit(main())
