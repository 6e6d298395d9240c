"""`edgekit import`: a user's own Keras, ONNX or TFLite model becomes a model of a run."""
