"""CNN families: Keras-free specs, family TOML files, the Keras models and custom layers they build."""
