"""The background deliverer: spool to sinks, retries, dead letters, `once = true`."""
