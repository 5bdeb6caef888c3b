"""`serfbridge relay`: inbound messages into Serf, and stream mode."""
