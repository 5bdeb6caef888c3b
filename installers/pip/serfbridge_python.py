#!/usr/bin/env python3
# `serfbridge-python` of a pip install; `serfbridge` beside it runs this file with -I -S (see
# installers/pip/serfbridge and docs/building.md). The wheel ships it as a script, so pip
# rewrites the shebang to the interpreter it installs into; run directly it starts normally.
# Under -S no `site` has run: add this interpreter's site-packages and import serfbridge
# from there (the capture path needs only the standard library). An editable install is
# found through its .pth file, so there `site` runs after all; a --user install (user site
# is off under -I) starts again without flags. Kept short: a script is compiled on every
# start, a module's byte-code is cached (serfbridge.cli.script_main does the rest).
import sys

if sys.flags.no_site:
    import site  # under -S this only defines site's functions

    sys.path.extend(p for p in site.getsitepackages() if p not in sys.path)
    try:
        from serfbridge.cli import script_main
    except ImportError:
        site.main()
        try:
            from serfbridge.cli import script_main
        except ImportError:
            import os

            os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])  # noqa: S606
else:
    from serfbridge.cli import script_main

sys.exit(script_main(__file__))
