"""The HTTP/1.1 transport: a connection (framing, stamps), the listener (caps, deadlines, drain), the byte budget."""
