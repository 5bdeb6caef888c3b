#!/usr/bin/env python3
"""Cost of one log record, and of noticing that the file was rotated away.

serfbridge.log writes each record with one ``os.write``. The relay and the deliverer also
reopen the file when its path names a new inode (logrotate); this compares, interleaved in
one run on one file:

* ``os.write`` alone: the floor, one record's bytes on an O_APPEND descriptor;
* ``log.info``, no rotation check: what a handler run pays (it opens the file anew each run);
* ``log.info`` + ``follow_rotation``: the relay's and deliverer's records (one ``stat`` pair
  at most once a second);
* ``log.info`` + ``stat``/``fstat`` on every record: the alternative not taken.

Compare rows within one run; nothing here is asserted by the tests.

Usage::

    python tests/perf/bench_log.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from serfbridge import log


def _per_record(write: Callable[[], None], records: int) -> float:
    start = time.perf_counter()
    for _ in range(records):
        write()
    return (time.perf_counter() - start) / records * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=20000, help="records per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "serfbridge.log")
        line = b'ts=2026-01-01T00:00:00.000Z level=info pid=1 msg="delivered" sink=hook\n'

        def raw() -> None:
            os.write(log._state["fd"], line)

        def plain() -> None:
            log.info("delivered", sink="hook", entry="1700000000-0001.json")

        def every() -> None:
            os.stat(path)
            os.fstat(log._state["fd"])
            plain()

        rows: dict[str, list[float]] = {"os.write": [], "log.info": [], "follow": [], "every": []}
        for _ in range(args.rounds):
            for name, times in rows.items():
                log._watch["every"] = 0.0
                log.configure(path)
                if name == "follow":
                    log.follow_rotation()
                fn = {"os.write": raw, "log.info": plain, "follow": plain, "every": every}[name]
                times.append(_per_record(fn, args.records))
                os.close(log._state["fd"])
                os.unlink(path)
    labels = {
        "os.write": "os.write alone (floor)",
        "log.info": "log.info, no rotation check (handler)",
        "follow": "log.info + follow_rotation (relay, deliverer)",
        "every": "log.info + stat/fstat every record",
    }
    base = statistics.median(rows["log.info"])
    print(f"{args.rounds} rounds x {args.records} records, interleaved; µs per record")
    print("| row | median µs | min µs | x log.info |")
    print("|---|---:|---:|---:|")
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"| {labels[name]} | {med:.2f} | {min(times):.2f} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
