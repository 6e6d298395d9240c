"""Device side of edgekit, never TensorFlow: core, artifacts, backends, bundle, tables, runtime, v2 and serve."""
