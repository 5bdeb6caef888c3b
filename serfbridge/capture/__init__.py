"""The capture path: what runs on every Serf event, standard library only.

Serf waits for each handler run, so this layer imports nothing heavy: parse the event, read
the compiled config, append to file sinks, spool for the deliverer, answer a query. Two lazy
exits leave it, each only when needed: ``config`` on a cache miss (pydantic validates the TOML
once) and ``serf.rpc`` for ``exact_tags`` (msgpack). tests/test_layers.py enforces this, and
the Linux packages copy this folder, plus ``OUTSIDE`` below, to run it on the system Python.
"""

# Top-level modules of serfbridge that the capture path uses besides this folder: the entry
# point and the shared leaves. _types is for type checkers only.
OUTSIDE = ("__init__", "cli", "errors", "log", "_types")
