"""serfbridge: the event bridge for HashiCorp Serf.

Nothing is imported here on purpose: Serf runs the handler once per event, so every
import on the package's import path is paid per event, cluster-wide.
"""

__version__ = "0.1.0"
