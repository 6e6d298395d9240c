"""The Open Inference Protocol (KServe v2): the daemon's codec, the client's codec and the Python client."""
