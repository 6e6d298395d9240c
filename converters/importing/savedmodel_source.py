"""A user's TensorFlow SavedModel folder: its graph screened, run as a Keras model (TFSMLayer), kept as saved_model/.

A SavedModel is a TensorFlow program, not data: its functions may read and write files. Before
TensorFlow loads it, every op of the functions the serving signature and the load run is screened;
file, Python and reader ops are refused (checkpoint save ops are allowed only in functions the
serving path never calls). Symlinks and anything but regular files in the folder are refused.
Conversion wraps it in a Keras model with the input convention folded in front, so it makes every
format a Keras model makes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from converters.importing.conventions import InputConvention
from converters.importing.keras_source import KerasGraphSource
from converters.importing.sources import SAVED_MODEL_FILE, check_image_model, check_scores
from edge.core.errors import StepFailed, UsageError

FOLDER = "saved_model"
SIGNATURE = "serving_default"
# Ops that touch files or run Python: never in what edgekit runs of an untrusted graph.
DENIED = {"ReadFile", "WriteFile", "MatchingFiles", "DeleteFile", "PyFunc", "PyFuncStateless", "EagerPyFunc",
          "ImmutableConst", "Save", "SaveSlices", "SaveV2", "MergeV2Checkpoints", "Restore", "RestoreSlice",
          "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader",
          "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "IdentityReader",
          "IdentityReaderV2", "LMDBReader", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "Skipgram",
          "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "LoadAndRemapMatrix", "SummaryWriter",
          "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary", "WriteImageSummary",
          "WriteHistogramSummary", "WriteAudioSummary", "WriteRawProtoSummary", "WriteGraphSummary",
          "CreateSummaryDbWriter"}
DENIED_PARTS = ("Dataset", "Iterator", "PyFunc")  # tf.data pipelines read files; iterators feed them


def tree_files(root: Path) -> list[Path]:
    """Every file under ``root`` (sorted); a symlink or special file is refused by name."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = d / name
            if p.is_symlink():
                raise UsageError(f"{root}: {p} is a symlink; a SavedModel folder may hold regular files only "
                                 "(copy the real files in)")
            if name in filenames and not p.is_file():
                raise UsageError(f"{root}: {p} is not a regular file; a SavedModel folder may hold regular files only")
            if name in filenames:
                out.append(p)
    return sorted(out)


def tree_sha256(root: Path) -> str:
    """sha256 over every file's relative path and bytes: changes when any file of the folder does."""
    h = hashlib.sha256()
    for p in tree_files(root):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _func_refs(attr_values) -> list[str]:
    out = []
    for v in attr_values:
        if v.HasField("func"):
            out.append(v.func.name)
        if v.HasField("list"):
            out += [f.name for f in v.list.func]
    return out


def screen_graph(path: Path) -> None:
    """Refuse a SavedModel whose serving or load path holds a file, Python or reader op (naming it)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((path / SAVED_MODEL_FILE).read_bytes())
    except (DecodeError, OSError) as exc:
        raise UsageError(f"{path / SAVED_MODEL_FILE} is not a SavedModel ({exc}); it is truncated or damaged: "
                         "export it again (model.export(path) or tf.saved_model.save)") from None
    if len(sm.meta_graphs) != 1:
        raise UsageError(f"{path}: {len(sm.meta_graphs)} meta graphs; edgekit imports SavedModels with one")
    mg = sm.meta_graphs[0]
    if SIGNATURE not in mg.signature_def:
        raise UsageError(f"{path}: no '{SIGNATURE}' signature (has {sorted(mg.signature_def)}); export the model "
                         "with a serving signature")
    funcs = {f.signature.name: f for f in mg.graph_def.library.function}
    # What loading and serving run: the top-level graph (variables, the init op) and every function it calls,
    # except the checkpoint-saving functions that only a save would call.
    todo = [r for n in mg.graph_def.node for r in _func_refs(n.attr.values())]
    seen: set[str] = set()
    bad: list[tuple[str, str]] = [(n.op, "the top-level graph") for n in mg.graph_def.node if _denied(n.op)]
    while todo:
        name = todo.pop()
        if name in seen or name not in funcs:
            continue
        seen.add(name)
        for node in funcs[name].node_def:
            todo += _func_refs(node.attr.values())
            if _denied(node.op) and not _save_only(name, node.op):
                bad.append((node.op, f"function {name}"))
    if bad:
        op, where = bad[0]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UsageError(f"{path}: its graph runs the op {op} (in {where}{more}), "
                         "which reads or writes files or runs Python; edgekit runs no such op of an untrusted "
                         "model. Export the model without it (or save it as .keras, .onnx or .tflite)")


def _denied(op: str) -> bool:
    return op in DENIED or any(part in op for part in DENIED_PARTS)


def _save_only(func_name: str, op: str) -> bool:
    # tf.saved_model.save writes a checkpoint-saving function (SaveV2 and friends) that only saving calls.
    return "_traced_save" in func_name and op in ("SaveV2", "MergeV2Checkpoints")


def keras_model(path: Path):
    """The SavedModel's serving signature as a Keras model (keras.layers.TFSMLayer), one tensor out."""
    import keras

    try:
        layer = keras.layers.TFSMLayer(str(path), call_endpoint=SIGNATURE)
    except Exception as exc:  # TensorFlow raises many types for a bad folder
        raise UsageError(f"{path}: TensorFlow cannot load it as a SavedModel ({' '.join(str(exc).split())[:400]}); "
                         "export it again") from None
    import tensorflow as tf

    sig = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    args, kwargs = sig.structured_input_signature
    specs = list(args) + list(kwargs.values())
    outs = sig.structured_outputs
    outs = list(outs.values()) if isinstance(outs, dict) else list(outs) if isinstance(outs, (list, tuple)) else [outs]
    if len(specs) != 1 or len(outs) != 1:
        raise UsageError(f"{path}: the serving signature has {len(specs)} inputs and {len(outs)} outputs; edgekit "
                         "imports image classifiers with one image input and one (N, classes) output")
    if specs[0].dtype != tf.float32:
        raise UsageError(f"{path}: its input is {specs[0].dtype.name}; edgekit feeds float32 images")
    hwc = check_image_model(path, tuple(specs[0].shape), "its")
    classes = check_scores(path, tuple(outs[0].shape), "its")
    inp = keras.Input(hwc, dtype="float32")
    y = layer(inp)
    if isinstance(y, dict):
        y = next(iter(y.values()))
    return keras.Model(inp, y), hwc, classes


class SavedModelSource(KerasGraphSource):
    """A SavedModel folder: screened, run through TFSMLayer, kept as the run's saved_model/ folder."""

    format = "savedmodel"
    file_name = FOLDER

    def __init__(self, path: Path):
        super().__init__(path)
        self.sha256 = tree_sha256(path)
        screen_graph(path)
        self.model, self.input_hwc, self.classes = keras_model(path)
        self.params = int(self.model.count_params())

    def write(self, model_dir: Path, convention: InputConvention) -> Path:
        """A copy of the folder (regular files only), put in place by one rename; the convention stays in train.json."""
        out = model_dir / self.file_name
        tmp = model_dir / f".{self.file_name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for p in tree_files(self.path):
                dst = tmp / p.relative_to(self.path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
            if tree_sha256(tmp) != self.sha256:
                raise StepFailed(f"{self.path} changed while it was copied into {model_dir}; import it again")
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out
