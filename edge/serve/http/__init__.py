"""The daemon's HTTP/1.1 transport: one connection (framing, stamps), the listener (caps, deadlines, drain)."""
