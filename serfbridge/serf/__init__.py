"""Clients of the Serf agent's RPC protocol."""
