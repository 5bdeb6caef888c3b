#!/usr/bin/env python3
# `serfbridge-python` of a pip install; `serfbridge` beside it runs this file with -I -S (see
# installers/pip/serfbridge and docs/building.md). The wheel ships it as a script, so pip
# rewrites the shebang to the interpreter it installs into; run directly it starts normally.
# Under -S no `site` has run, and sys.prefix is still the base interpreter's even in a venv:
# find the venv from its pyvenv.cfg and move sys.prefix there as site.venv() does, add only its
# site-packages and import serfbridge from there (the capture path needs only the standard
# library). An editable install is found through its .pth file, so there `site` runs after
# all; a --user install (user site is off under -I) starts again without flags. Kept short:
# a script is compiled on every start (serfbridge.cli.script_main does the rest).
import sys

if sys.flags.no_site:
    import os
    import site  # under -S this only defines site's functions

    bindir = os.path.dirname(os.path.abspath(sys.executable))
    venv = os.path.dirname(bindir)
    if any(os.path.isfile(os.path.join(d, "pyvenv.cfg")) for d in (bindir, venv)):
        # As site.venv() does; Debian's getsitepackages() names the venv's site-packages
        # only once sys.prefix is the venv (else dist-packages alone).
        sys.prefix = sys.exec_prefix = venv
    sys.path.extend(p for p in site.getsitepackages([sys.prefix]) if p not in sys.path)
    try:
        from serfbridge.cli import script_main
    except ImportError:
        for name in [m for m in sys.modules if m.partition(".")[0] == "serfbridge"]:
            del sys.modules[name]
        site.main()
        try:
            from serfbridge.cli import script_main
        except ImportError:
            os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])  # noqa: S606
else:
    from serfbridge.cli import script_main

sys.exit(script_main(__file__))
