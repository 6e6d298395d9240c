"""Running sweep tasks on Ray, and importing TensorFlow quietly."""
