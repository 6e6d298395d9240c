"""`edgekit serve`: the daemon's command, its app over the runtime, its metrics; the HTTP transport in `http/`."""
