"""What a converted model is: the format vocabulary, the manifest, and the tensors in and out."""
