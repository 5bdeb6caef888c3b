"""The compiled-config cache: pydantic validates once, every later event reads ``marshal``.

Validation with pydantic-settings costs ~0.4 s of imports; reading a marshal file costs
~0.1 ms. The cache entry is keyed by the config path plus every ``SERFBRIDGE_*`` variable,
and stamped with the config file's stat (mtime, ctime, size, inode), so editing or replacing
the file, or changing the environment, recompiles on the next event. Secrets resolved at
compile time (``config.secrets``: ``*_file`` keys, ``${VAR}`` values) are recorded as the
entry's ``inputs``: the variables' names and the files' paths, with a digest of their values
and stats; a hit re-checks that digest, so a rotated secret file or a changed variable also
recompiles. Entries hold secrets in clear, so they are written with mode 0600 in a
directory only the agent's user uses.

The entry is plain data (dicts, lists, str, int, float, bool, None) written with marshal
format 4, which every CPython since 3.4 reads, and the key leaves out the Python version:
the Linux launcher reads on the system Python what the frozen build (another CPython) wrote.
"""

import marshal
import os

from serfbridge import __version__
from serfbridge.capture import files, paths, runtime
from serfbridge.errors import ConfigError

try:
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - CPython builds always ship _blake2
    from hashlib import blake2b

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import Compiled, Inputs

_FORMAT = 3
# Pinned, not marshal.version: a newer writer's default could be unreadable to an older reader.
_MARSHAL_VERSION = 4


def file_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return file_stamp(st)


def inputs_digest(env_values: list[str | None], file_stamps: list[object]) -> str:
    """One digest of the secret inputs' current values (nothing secret is stored in clear)."""
    data = repr((env_values, file_stamps)).encode("utf-8", "surrogateescape")
    return blake2b(data, digest_size=16).hexdigest()


def seal(inputs: "Inputs") -> "Inputs":
    """``inputs`` as stored: the values observed at compile time become one digest."""
    values, stats = inputs.pop("observed", ([], []))
    inputs["digest"] = inputs_digest(values, [file_stamp(st) for st in stats])
    return inputs


def _inputs_current(inputs: "Inputs | None") -> bool:
    if not inputs or not (inputs["env"] or inputs["files"]):
        return True
    stamps: list[object] = []
    for path in inputs["files"]:
        try:
            stamps.append(file_stamp(os.stat(path)))
        except OSError:
            return False
    values = [os.environ.get(name) for name in inputs["env"]]
    return inputs_digest(values, stamps) == inputs.get("digest")


def _cache_file(path: str) -> str:
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("SERFBRIDGE_"))
    key = repr((_FORMAT, os.path.abspath(path), env, __version__))
    cache_dir = os.environ.get("SERFBRIDGE_CACHE_DIR") or paths.default_cache_dir()
    name = blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    return os.path.join(cache_dir, name + ".marshal")


def _read(cache: str, stamp: object) -> "Compiled | None":
    try:
        with open(cache, "rb") as fh:
            entry = marshal.loads(fh.read())  # noqa: S302 - our own 0600 file
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(entry, dict) or entry.get("stamp") != stamp:
        return None
    compiled: Compiled = entry["compiled"]
    if not _inputs_current(compiled.get("inputs")):
        return None
    return compiled


def _write(cache: str, stamp: object, compiled: "Compiled") -> None:
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        data = marshal.dumps({"stamp": stamp, "compiled": compiled}, _MARSHAL_VERSION)
        # Not durable: a cache lost in a power cut is rebuilt by the next event.
        files.write_atomic(cache, data, durable=False)
    except OSError:
        pass  # a read-only cache location only costs speed: every event recompiles


def fingerprint(explicit: str | None = None, inputs: "Inputs | None" = None) -> str:
    """What the compiled config depends on: the cache key (path, ``SERFBRIDGE_*``, version),
    the file's stamp and, given the ``inputs`` a load recorded, the secret files and
    variables it read. The deliverer and the stream relay reload when it changes."""
    path = paths.config_path(explicit)
    secret: object = None
    if inputs and (inputs.get("env") or inputs.get("files")):
        stamps: list[object] = []
        for name in inputs.get("files", []):
            try:
                stamps.append(file_stamp(os.stat(name)))
            except OSError:
                stamps.append(None)
        secret = inputs_digest([os.environ.get(n) for n in inputs.get("env", [])], stamps)
    return repr((_cache_file(path), _stamp(path), secret))


def load(explicit: str | None = None) -> "Compiled":
    """The validated config for ``--config``/``SERFBRIDGE_CONFIG``/the per-OS default.

    A missing file is fine at the default location (the embedded default applies) and an
    error when it was named explicitly.
    """
    path = paths.config_path(explicit)
    stamp = _stamp(path)
    if stamp is None and paths.config_named(explicit):
        raise ConfigError(f"config file {path} does not exist")
    cache = _cache_file(path)
    compiled = _read(cache, stamp)
    if compiled is not None:
        return compiled
    # Compiling needs pydantic: an interpreter without it hands the run over here.
    runtime.need_full("config cache missing or stale")
    compiled = compile_now(path if stamp is not None else None)
    _write(cache, stamp, compiled)
    return compiled


def compile_now(path: str | None) -> "Compiled":
    from serfbridge.config.models import compile_settings, load_settings

    compiled = compile_settings(load_settings(path), path)
    if "inputs" in compiled:
        compiled["inputs"] = seal(compiled["inputs"])
    return compiled
