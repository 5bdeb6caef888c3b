#!/usr/bin/python3 -IS
"""``serfbridge`` in the Linux packages: runs capture/serfbridge_launcher.py (see there).

``-I`` ignores ``PYTHON*`` variables and the user's site directory and leaves the script's
directory off ``sys.path``; ``-S`` skips ``site`` (no dist-packages: nothing installed on the
host can shadow the capture modules, and ~3 ms less). Linux passes the rest of the shebang
line as one argument, so the flags are one word: ``-I -S`` would be an unknown option.
"""

import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(HERE, "capture"))
try:
    from serfbridge_launcher import main
except ImportError:
    # Broken installation: the frozen build can still do everything, a little slower.
    frozen = os.path.join(HERE, "serfbridge-frozen")
    os.execv(frozen, [frozen, *sys.argv[1:]])  # noqa: S606 - argv list, no shell wanted
sys.exit(main())
