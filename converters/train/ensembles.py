"""Building a family's [[ensemble]]s in a run folder from finished members: no training, one evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from converters.family.family import EnsembleNotReady
from converters.family.keras_build import build_ensemble, keras_name, load_keras_model
from converters.train.model import run_fields, save_and_check, tf_dataset
from converters.train.options import Schedule
from converters.train.run_folder import MODEL_FILE, SPEC_FILE, TRAIN_FILE, is_imported, read_finished
from edge.core.atomic import atomic_write_json
from edge.core.errors import StepFailed


def member_sha256(models_dir: Path, members) -> dict[str, str]:
    """sha256 of each member's model.keras: an ensemble is rebuilt when one of them changes."""
    from edge.core.atomic import sha256_file

    return {m: sha256_file(models_dir / m / MODEL_FILE) for m in members}


def ensemble_finished(model_dir: Path, ens, models_dir: Path) -> dict[str, Any] | None:
    """The ensemble's train.json if it is finished and was built from the members' current model.keras."""
    rec = read_finished(model_dir, ens.model_id)
    if rec is None or rec.get("members") != list(ens.members):
        return None
    try:
        if rec.get("member_sha256") != member_sha256(models_dir, ens.members):
            return None
    except FileNotFoundError:
        return None
    return rec


def build_ensemble_one(ens, splits, models_dir: Path, schedule: Schedule, seed: int, write=print) -> dict[str, Any]:
    """Build an ensemble of finished members into models/<id>/ (spec.json, model.keras, train.json last).

    No training: the members' model.keras are loaded, wrapped into one model averaging their softmax,
    and evaluated like a trained model (same validation and test splits, compiled accuracy metric).
    """
    import keras

    model_dir = models_dir / ens.model_id
    t0 = time.perf_counter()
    # A rebuild (members changed) first marks the folder unfinished: never new files under an old train.json.
    (model_dir / TRAIN_FILE).unlink(missing_ok=True)
    members_rec = {}
    for m in ens.members:
        rec = read_finished(models_dir / m, m)
        if rec is None:
            raise StepFailed(f"ensemble {ens.model_id}: member {m} is not finished in {models_dir}")
        if is_imported(rec):
            raise StepFailed(f"ensemble {ens.model_id}: member {m} is an imported model; ensembles are built "
                             "from the family's trained models only")
        members_rec[m] = rec
    shas = member_sha256(models_dir, ens.members)
    keras.backend.clear_session()
    members = [load_keras_model(models_dir / m / MODEL_FILE) for m in ens.members]
    for m, km in zip(ens.members, members):
        takes = tuple(int(d) for d in km.inputs[0].shape[1:])
        if takes[-1:] != tuple(splits.input_shape)[-1:]:
            raise StepFailed(f"ensemble {ens.model_id}: member {m} takes {takes} images but the run's are "
                             f"{tuple(splits.input_shape)}; an ensemble's members take the run's channels "
                             "(list other members)")
    # The ensemble takes the run's images; a member at another resolution resizes them inside it (Resample).
    model = build_ensemble(members, name=keras_name(ens.model_id), views=ens.views,
                           input_shape=tuple(splits.input_shape))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False), metrics=["accuracy"])
    val_ds = tf_dataset(splits.x_val, splits.y_val, 512, shuffle_seed=None)
    val_acc = float(model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])
    test_ds = tf_dataset(splits.x_test, splits.y_test, 512, shuffle_seed=None)
    test_acc = float(model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])

    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model_dir / SPEC_FILE, ens.to_dict())
    save_and_check(model, model_dir, splits, tolerance=1e-5)

    record = {
        "model_id": ens.model_id,
        "kind": "ensemble",
        "members": list(ens.members),
        "member_sha256": shas,
        "member_test_accuracy": {m: float(r["test_accuracy"]) for m, r in members_rec.items()},
        "epochs": 0,
        "best_epoch": 0,
        "wall_s": round(time.perf_counter() - t0, 3),
        "test_accuracy": test_acc,
        "val_accuracy": val_acc,
        "params": int(sum(int(r["params"]) for r in members_rec.values())),
        "macs": int(sum(int(r["macs"]) for r in members_rec.values())) * len(ens.views),
        "views": list(ens.views),
        **run_fields(seed, splits, schedule),
    }
    atomic_write_json(model_dir / TRAIN_FILE, record)
    keras.backend.clear_session()
    return record


def resolve_ensembles(family, models_dir: Path, selected: list[str], write) -> list:
    """The family's [[ensemble]] declarations whose members are finished, as EnsembleSpecs (no duplicates)."""
    if not family.ensembles:
        return []
    wanted = set(selected)
    for decl in family.ensembles:
        wanted.update(decl.members)
    val_acc = {}
    for m in sorted(wanted):
        rec = read_finished(models_dir / m, m)
        if rec is not None and not is_imported(rec):  # imported models are never members
            val_acc[m] = float(rec["val_accuracy"])
    out, seen = [], {}
    for decl in family.ensembles:
        try:
            ens = decl.resolve(val_acc, selected)
        except EnsembleNotReady as exc:
            write(f"note: {exc}")
            continue
        key = (ens.members, ens.views)
        if key in seen:
            first = seen[key]
            write(f"note: {decl.where} has the same members and views as ensemble[{first[0]}] ({first[1]}); "
                  "built once")
            continue
        seen[key] = (decl.index, ens.model_id)
        out.append(ens)
    return out

