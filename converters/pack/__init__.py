"""`edgekit bundle`: packing what one device profile needs into a folder or tar.gz."""
