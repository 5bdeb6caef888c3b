#!/usr/bin/env python3
"""Cost of a compiled-config cache hit, with and without secrets from files and variables.

Every Serf event reads the compiled config (``serfbridge.capture.cache.load``). With
``*_file`` secrets or ``${VAR}`` values the hit also re-checks them: one ``os.stat`` per
secret file, one environment lookup per variable and a blake2b digest. Rows, interleaved in
rounds so machine noise hits each alike (median microseconds per load):

    os.stat(config)     the floor: the stat every hit does anyway
    plain               a config with one webhook sink and inline secrets
    secrets: 2 files    the same secrets from two *_file keys
    secrets: 2 files + 2 vars   and two ${VAR} values

Usage::

    python tests/perf/bench_cache.py [--loads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

HOOK = "[[sinks]]\ntype = 'webhook'\nname = 'hook'\nurl = '{url}'\n"


def write_configs(root: Path) -> dict[str, Path]:
    for name in ("token", "whsec"):
        path = root / name
        path.write_text(f"{name}-value\n")
        path.chmod(0o600)
    state = f"state_dir = '{root / 'state'}'\n"
    bodies = {
        "plain": HOOK.format(url="http://127.0.0.1:9/") + "bearer_token = 't'\nhmac_secret = 'k'\n",
        "secrets: 2 files": HOOK.format(url="http://127.0.0.1:9/")
        + f"bearer_token_file = '{root / 'token'}'\nhmac_secret_file = '{root / 'whsec'}'\n",
        "secrets: 2 files + 2 vars": HOOK.format(url="http://${BENCH_HOST}:${BENCH_PORT:-9}/")
        + f"bearer_token_file = '{root / 'token'}'\nhmac_secret_file = '{root / 'whsec'}'\n",
    }
    paths = {}
    for k, (label, body) in enumerate(bodies.items()):
        path = root / f"c{k}.toml"
        path.write_text(state + body)
        paths[label] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=2000, help="loads per row and round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SERFBRIDGE_CACHE_DIR"] = str(root / "cache")
        os.environ["BENCH_HOST"] = "127.0.0.1"
        from serfbridge.capture import cache

        configs = write_configs(root)
        for path in configs.values():
            cache.load(str(path))  # compile once: every timed load is a hit
        first = next(iter(configs.values()))
        rows: dict[str, list[float]] = {label: [] for label in ["os.stat(config)", *configs]}
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.loads):
                os.stat(first)
            rows["os.stat(config)"].append((time.perf_counter() - started) / args.loads)
            for label, path in configs.items():
                text = str(path)
                started = time.perf_counter()
                for _ in range(args.loads):
                    cache.load(text)
                rows[label].append((time.perf_counter() - started) / args.loads)
        base = statistics.median(rows["plain"])
        print(f"{'row':<28} {'us/load':>9} {'vs plain':>9}")
        for label, samples in rows.items():
            median = statistics.median(samples)
            print(f"{label:<28} {median * 1e6:>9.1f} {median / base:>8.2f}x")


if __name__ == "__main__":
    main()
