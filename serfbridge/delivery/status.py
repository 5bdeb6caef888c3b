"""``serfbridge status``: what delivery is doing, for an operator or a monitoring script.

Exit 0 when nothing is stuck; 8 (``EXIT_PENDING``) when a sink's oldest entry is older than
``--stuck-after`` seconds or a sink has dead letters.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from serfbridge.capture.spool import deliverer_running, spool_dir
from serfbridge.delivery import stats

EXIT_STUCK = 8


def deliverer_info(state_dir: str) -> dict[str, Any]:
    running = deliverer_running(state_dir)
    info: dict[str, Any] = {"running": running, "pid": None, "since": None}
    path = spool_dir(state_dir, "deliver.pid")
    if running:
        try:
            with open(path, encoding="ascii") as fh:
                info["pid"] = int(fh.read().strip())
            info["since"] = os.stat(path).st_mtime
        except (OSError, ValueError):
            pass
    return info


def collect(state_dir: str, sinks: list[str]) -> dict[str, Any]:
    snap = stats.snapshot(state_dir, sinks)
    return {"sinks": snap["sinks"], "deliverer": deliverer_info(state_dir),
            "rejected": snap["rejected"]}  # fmt: skip


def stuck(report: dict[str, Any], threshold: float) -> list[str]:
    return [
        name
        for name, s in report["sinks"].items()
        if s["dead"] or (s["queued"] and s["oldest_age"] > threshold)
    ]


def table(report: dict[str, Any]) -> str:
    rows = [("sink", "queued", "oldest", "attempts", "dead", "last error")]
    for name, s in report["sinks"].items():
        oldest = f"{s['oldest_age']:.1f}s" if s["queued"] else "-"
        rows.append((name, str(s["queued"]), oldest, str(s["attempts"]), str(s["dead"]),
                     s["last_error"][:60] or "-"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
             for r in rows]  # fmt: skip
    d = report["deliverer"]
    if d["running"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["since"])) if d["since"] else "?"
        lines.append(f"deliverer: running, pid {d['pid']}, since {since} UTC")
    else:
        lines.append("deliverer: not running")
    lines.append(f"rejected entries: {report['rejected']}")
    return "\n".join(lines) + "\n"


def run(settings: Any, as_json: bool, threshold: float) -> int:
    report = collect(settings.state_path, [s.name for s in settings.effective_sinks()])
    print(json.dumps(report, indent=2) if as_json else table(report), end="\n" if as_json else "")
    return EXIT_STUCK if stuck(report, threshold) else 0
