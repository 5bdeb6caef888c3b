"""Default locations per operating system.

Everything here must stay cheap: it runs on every Serf event.
"""

import os
import sys

WINDOWS = sys.platform == "win32"


def _program_data() -> str:
    # "ProgramData" is the variable's real spelling on Windows.
    found = os.environ.get("ProgramData") or os.environ.get("PROGRAMDATA")  # noqa: SIM112
    return found or r"C:\ProgramData"


def default_config_path() -> str:
    if WINDOWS:
        return os.path.join(_program_data(), "serfbridge", "serfbridge.toml")
    return "/etc/serfbridge/serfbridge.toml"


def default_state_dir() -> str:
    """Where the spool, dead letters, logs and the default event file live.

    A system agent (root on Linux, any Windows service) gets the system location; an agent run
    by an ordinary user keeps its state under that user's home, as XDG says.
    """
    if WINDOWS:
        return os.path.join(_program_data(), "serfbridge")
    if os.geteuid() == 0:
        return "/var/lib/serfbridge"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "serfbridge")


def default_cache_dir() -> str:
    """Where the compiled-config cache lives; independent of the config it caches."""
    if WINDOWS:
        base = os.environ.get("LOCALAPPDATA") or _program_data()
        return os.path.join(base, "serfbridge", "cache")
    if os.geteuid() == 0:
        return "/var/cache/serfbridge"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "serfbridge")


def config_path(explicit: str | None = None) -> str:
    """``--config`` wins, then ``SERFBRIDGE_CONFIG``, then the per-OS default."""
    return explicit or os.environ.get("SERFBRIDGE_CONFIG") or default_config_path()


def absolute(path: str) -> str:
    """``~`` expanded, made absolute: how every configured directory is used."""
    return os.path.abspath(os.path.expanduser(path))


def config_named(explicit: str | None = None) -> bool:
    """Whether the user named a config file (then a missing file is an error)."""
    return bool(explicit or os.environ.get("SERFBRIDGE_CONFIG"))


def fallback_state_dir(explicit: str | None = None) -> str:
    """Where to keep an event when the config can't be used: the state_dir the user meant.

    ``SERFBRIDGE_STATE_DIR`` first, then a ``state_dir`` that the (otherwise invalid) file
    still states, then the per-OS default.
    """
    from_env = os.environ.get("SERFBRIDGE_STATE_DIR")
    if from_env:
        return absolute(from_env)
    try:
        import tomllib

        with open(config_path(explicit), "rb") as fh:
            stated = tomllib.load(fh).get("state_dir")
    except (OSError, ValueError):  # tomllib.TOMLDecodeError is a ValueError
        stated = None
    if isinstance(stated, str) and stated:
        return absolute(stated)
    return default_state_dir()
