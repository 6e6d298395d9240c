"""`edgekit serve`: its config and command, the server, the app over the data plane, errors, metrics, log; `http/`."""
