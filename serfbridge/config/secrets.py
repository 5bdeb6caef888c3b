"""Secrets outside the config file: ``<key>_file`` and ``${VAR}`` interpolation.

Runs on the TOML data before validation, so it happens once per compile and the handler's
cache-hit path never sees it (docs/secrets.md):

- every string value is interpolated: ``${VAR}``, ``${VAR:-default}`` (default when unset or
  empty), ``$$`` is a literal ``$``; any other ``$`` stays as it is;
- a secret key (``SECRET_KEYS``) may instead be given as ``<key>_file``: the file's content,
  trailing newlines stripped. A relative path is under ``$CREDENTIALS_DIRECTORY`` (systemd
  ``LoadCredential=``) when that is set, else next to the config file. A file every user may
  read is refused.

What was read is returned as ``inputs`` (variable names, file paths and a digest of their
values at compile time) so the compiled cache can tell when a secret changed
(``capture.cache``).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from serfbridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

# Every key that holds secret material; each also accepts <key>_file. tests/test_secrets.py
# checks this against the SecretStr fields of the config models.
SECRET_KEYS = frozenset(
    {
        "bearer_token",
        "hmac_secret",
        "hmac_key",
        "mqtt_password",
        "password",
        "redis_password",
        "rpc_auth",
        "token",
    }
)
CREDENTIALS_VAR = "CREDENTIALS_DIRECTORY"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Values that look like a placeholder nobody expanded: ${X}, $X or %X% as the whole value.
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}|\A\$[A-Za-z_][A-Za-z0-9_]*\Z|\A%[A-Za-z_][A-Za-z0-9_]*%\Z")


def interpolate(text: str, lookup: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with ``${VAR}``/``${VAR:-default}`` expanded and ``$$`` made ``$``.

    Returns the text and the variable names looked up; raises ValueError for an unset
    variable without default, an unclosed ``${`` or a bad name.
    """
    out: list[str] = []
    names: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = text.find("$", i)
        if j < 0 or j == n - 1:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = text.find("}", j + 2)
            if end < 0:
                raise ValueError("'${' without a closing '}' (write $$ for a literal $)")
            name, sep, default = text[j + 2 : end].partition(":-")
            if not _NAME.match(name):
                raise ValueError(f"${{{name}}}: not a variable name")
            if name.startswith("SERF_"):
                raise ValueError(
                    f"${{{name}}}: SERF_* variables change with every event; "
                    "use a template field such as {event} instead"
                )
            names.append(name)
            value = lookup.get(name)
            if not value and sep:
                value = default
            elif value is None:
                raise ValueError(
                    f"environment variable {name} is not set (give a default: ${{{name}:-...}})"
                )
            out.append(value)
            i = end + 1
        else:
            out.append("$")
            i = j + 1
    return "".join(out), names


def _where(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Resolver:
    """One pass over the TOML data; collects what it read for the cache's ``inputs``."""

    def __init__(self, config_dir: str, environ: Mapping[str, str]) -> None:
        self.config_dir = config_dir
        self.environ = environ
        self.names: set[str] = set()
        self.files: dict[str, os.stat_result] = {}

    def value(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            try:
                text, names = interpolate(value, self.environ)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            self.names.update(names)
            return text
        if isinstance(value, dict):
            return self.table(value, where)
        if isinstance(value, list):
            return [self.value(item, _where(where, k)) for k, item in enumerate(value)]
        return value

    def table(self, data: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            here = _where(where, key)
            stem = key.removesuffix("_file")
            if key.endswith("_file") and stem in SECRET_KEYS:
                if stem in data:
                    raise ConfigError(f"{here}: give {stem} or {key}, not both")
                paths = self.value(value, here)
                if isinstance(paths, list):
                    out[stem] = [self.read(p, f"{here}[{k}]") for k, p in enumerate(paths)]
                elif isinstance(paths, str):
                    out[stem] = self.read(paths, here)
                else:
                    raise ConfigError(f"{here}: expected a file path")
            else:
                out[key] = self.value(value, here)
        return out

    def read(self, path: Any, where: str) -> str:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}: expected a file path")
        path = os.path.expanduser(path)
        if not os.path.isabs(path):
            base = self.environ.get(CREDENTIALS_VAR)
            self.names.add(CREDENTIALS_VAR)
            path = os.path.join(base or self.config_dir, path)
        try:
            st = os.stat(path)
            if os.name != "nt" and st.st_mode & 0o004:
                raise ConfigError(
                    f"{where}: {path} is readable by every user; "
                    f"restrict it first (chmod o-rwx {path})"
                )
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        # Stamped before reading: a change after the stat makes the next event recompile.
        self.files[path] = st
        try:
            text = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
        if not text:
            raise ConfigError(f"{where}: {path} is empty")
        return text

    def inputs(self) -> dict[str, Any]:
        """Names, paths and what they held at compile time (``capture.cache.seal`` digests
        the values, so none is stored)."""
        names = sorted(self.names)
        files = sorted(self.files)
        observed = ([self.environ.get(n) for n in names], [self.files[f] for f in files])
        return {"env": names, "files": files, "observed": observed}


def resolve(
    data: dict[str, Any], config_path: str | None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the data with secrets and variables filled in, the inputs the cache checks)."""
    config_dir = os.path.dirname(os.path.abspath(config_path)) if config_path else os.getcwd()
    resolver = Resolver(config_dir, os.environ if environ is None else environ)
    return resolver.table(data, ""), resolver.inputs()


def placeholders(value: Any, where: str = "") -> list[str]:
    """``location: value`` for each string that still looks like an unexpanded placeholder."""
    if isinstance(value, str):
        return [f"{where}: {value!r}"] if _PLACEHOLDER.search(value) else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += placeholders(item, _where(where, key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            found += placeholders(item, _where(where, k))
    return found
