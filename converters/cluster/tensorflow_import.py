"""Import TensorFlow and Keras once, with the start-up notices they print on stderr muted."""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with stderr muted: absl prints start-up notices no env var silences."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        # Restored before an ImportError propagates, so its traceback is still shown.
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
