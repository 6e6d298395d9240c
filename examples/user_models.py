"""Train the models a user would bring to `edgekit import`, the way a user would: plain Keras, on a folder of images.

Not part of the kit: this is the user's side of "Your own images and models" in the README. It reads
FOLDER/train/<class>/* with Keras' own ``image_dataset_from_directory`` (class names in sorted folder
order, as edgekit reads them) and writes into OUT:

- ``mobilenet_v2.keras``: ``keras.applications.MobileNetV2`` (``weights=None``, width 0.35), trained on
  inputs scaled to -1..1 with ``mobilenet_v2.preprocess_input``, softmax output. Import it with
  ``--input-range=-1..1``.
- ``small_cnn.keras``: a small Sequential CNN with the rescaling inside (it takes raw 0..255 pixels) and
  logits out; the same model exported as ``small_cnn.onnx`` (Keras' ``model.export(format="onnx")``)
  and ``small_cnn.tflite`` (``tf.lite.TFLiteConverter``).

    python examples/user_models.py FOLDER OUT [--size 32] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _datasets(folder: Path, size: int, batch: int):
    import keras

    train_dir = folder / "train" if (folder / "train").is_dir() else folder
    # Both subsets shuffle with the same seed: Keras splits the shuffled file list, so they never overlap.
    kw = dict(image_size=(size, size), color_mode="rgb", label_mode="int", batch_size=batch, seed=0,
              validation_split=0.1, shuffle=True)
    train = keras.utils.image_dataset_from_directory(train_dir, subset="training", **kw)
    val = keras.utils.image_dataset_from_directory(train_dir, subset="validation", **kw)
    return train, val, list(train.class_names)


def _mobilenet(size: int, classes: int):
    import keras

    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35, weights=None, classes=classes)
    # Its batch norms average with momentum 0.999, made for ImageNet's million steps: after a few
    # hundred steps their moving statistics are still the initial ones and inference scores at chance.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def _small_cnn(size: int, classes: int):
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((size, size, 3)),
        layers.Rescaling(1 / 255.0),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(classes),  # logits
    ], name="small_cnn")


def _fit(model, train, val, epochs: int, *, logits: bool) -> float:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits), metrics=["accuracy"])
    hist = model.fit(train, validation_data=val, epochs=epochs, verbose=2)
    return float(hist.history["val_accuracy"][-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="image folder: one subfolder per class (or train/ and test/ above them)")
    p.add_argument("out", type=Path, help="where to write the model files")
    p.add_argument("--size", type=int, default=32, help="input height and width (MobileNetV2 needs at least 32)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    train, val, classes = _datasets(args.folder, args.size, args.batch_size)
    print(f"classes ({len(classes)}): {classes}")

    # MobileNetV2 expects -1..1, so the user's pipeline scales the pixels; the saved model does not.
    pre = keras.applications.mobilenet_v2.preprocess_input
    t0 = time.perf_counter()
    mnet = _mobilenet(args.size, len(classes))
    acc = _fit(mnet, train.map(lambda x, y: (pre(x), y)), val.map(lambda x, y: (pre(x), y)), args.epochs,
               logits=False)
    mnet.save(args.out / "mobilenet_v2.keras")
    print(f"mobilenet_v2.keras: val accuracy {100 * acc:.2f}% ({time.perf_counter() - t0:.0f} s); "
          "it expects -1..1 input: import it with --input-range=-1..1")

    t0 = time.perf_counter()
    cnn = _small_cnn(args.size, len(classes))
    acc = _fit(cnn, train, val, args.epochs, logits=True)
    cnn.save(args.out / "small_cnn.keras")
    cnn.export(str(args.out / "small_cnn.onnx"), format="onnx", verbose=False)
    (args.out / "small_cnn.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(cnn).convert())
    print(f"small_cnn.keras, .onnx, .tflite: val accuracy {100 * acc:.2f}% ({time.perf_counter() - t0:.0f} s); "
          "they take raw 0..255 pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
