"""Proof that a board with only the runtime extra (no TensorFlow) opens bundles and runs their canary check.

A fresh virtualenv (no system site-packages) gets the `runtime` extra's requirements from
pyproject.toml; the repository is put on its PYTHONPATH so the code under test is the working
tree. The venv is cached under /tmp keyed by pyproject.toml and the Python version, so only the
first run pays for the install. Skipped (with pip's reason) only when the wheels cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib

from tests.converters.pack.test_packer import make_tiny_run

REPO = Path(__file__).resolve().parents[1]
BANNED = ("tensorflow", "keras", "tf_keras", "tensorflow_lite", "tf2onnx")
# pip failures that mean "no network / no wheel here", as opposed to a broken requirement.
UNREACHABLE = ("No matching distribution", "Could not find a version", "NewConnectionError",
               "Failed to establish a new connection", "Temporary failure in name resolution",
               "ConnectTimeoutError", "ReadTimeoutError", "Network is unreachable", "ProxyError")

pytestmark = pytest.mark.slow


def _runtime_requirements() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta.get("dependencies", [])) + list(meta["optional-dependencies"]["runtime"])
    bad = [r for r in reqs if r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() in BANNED]
    assert not bad, f"the runtime extra of pyproject.toml pulls in {bad}: a board must not need TensorFlow"
    return sorted(set(reqs))


def _venv_python() -> Path:
    """A cached venv with the runtime extra's requirements and nothing else (created on first use)."""
    reqs = _runtime_requirements()
    key = hashlib.sha256(json.dumps([reqs, sys.version, sys.platform]).encode()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"edgekit-runtime-venv-{key}"
    py = venv / "bin" / "python"
    stamp = venv / ".edgekit-runtime-ok"
    if stamp.is_file() and py.exists():
        return py
    # Built under a temp name and renamed, so an interrupted or concurrent build is never used half-done.
    tmp = Path(tempfile.mkdtemp(prefix=f"{venv.name}.tmp-", dir=venv.parent))
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(tmp)], check=True, capture_output=True, text=True, timeout=300)
        env = _clean_env()
        proc = subprocess.run(
            [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
            capture_output=True, text=True, timeout=900, env=env,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-2000:]
            if any(s in tail for s in UNREACHABLE):
                pytest.skip(f"the runtime wheels are not reachable from this machine (pip install {' '.join(reqs)}):\n{tail}")
            pytest.fail(f"pip install of the runtime extra failed in a fresh venv:\n{tail}")
        (tmp / stamp.name).write_text(json.dumps(reqs))
        if venv.exists():
            shutil.rmtree(venv, ignore_errors=True)
        try:
            os.rename(tmp, venv)
        except OSError:
            if not stamp.is_file():  # lost a race only if the winner finished its venv
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return py


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"  # a TensorFlow in ~/.local must not leak in
    return env


# Runs inside the runtime-only venv. A meta-path guard records any attempt to import TensorFlow or
# Keras, even one a caller would catch and survive, then the real `edgekit verify` and the API run.
CHECK = r"""
import importlib.abc, importlib.util, json, sys
BANNED = set(sys.argv[1].split(","))
attempts = []
class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BANNED:
            attempts.append(name)
        return None
sys.meta_path.insert(0, Guard())
importable = [m for m in BANNED if importlib.util.find_spec(m) is not None]
attempts.clear()

from edgekit.cli import main
from device_profiles import load_profile
from edge.backends import get_backend
from edge.bundle.reader import open_bundle
from edge.bundle.canary import check_canary

bundles = sys.argv[2:]
rcs = [main(["verify", b, "--profile", "desktop-cpu"]) for b in bundles]
results = {}
prof = load_profile("desktop-cpu")
for b in bundles:
    bundle = open_bundle(b)
    for a in bundle.artifacts:
        s = prof.settings_for(a.format)[0]
        with get_backend(s.backend).load(bundle.artifact_path(a.artifact_id), s) as m:
            r = check_canary(bundle, a.artifact_id, m)
        results[a.artifact_id] = [bool(r.ok), bool(r.skipped), r.message]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BANNED)
print("RESULT " + json.dumps({"rcs": rcs, "results": results, "importable": importable,
                              "attempts": attempts, "loaded": loaded, "prefix": sys.prefix}))
"""


@pytest.fixture(scope="module")
def board_bundles(request, tmp_path_factory):
    """(rpi4 archive, jetson-orin-nano folder, artifact ids): from the real pipeline when the real
    Fashion-MNIST is installed (every format and precision), else from the synthetic tiny run."""
    from converters.pack.packer import build_bundle

    base = tmp_path_factory.mktemp("runtime-venv")
    try:
        run = request.getfixturevalue("real_run")
    except pytest.skip.Exception:
        run = make_tiny_run(base / "run")
    rpi4 = base / "rpi4.tar.gz"
    jetson = base / "jetson-orin-nano"
    r1 = build_bundle(run, "rpi4", rpi4, eval_size=20, force=True, say=lambda s: None)
    r2 = build_bundle(run, "jetson-orin-nano", jetson, eval_size=20, force=True, say=lambda s: None)
    return rpi4, jetson, set(r1.included) | set(r2.included)


def test_runtime_only_venv_opens_bundles_and_runs_canary(board_bundles, tmp_path):
    rpi4, jetson, expected = board_bundles
    assert {i.rsplit(".", 1)[1].split("-")[0] for i in expected} == {"tflite", "onnx"}
    t0 = time.perf_counter()
    py = _venv_python()
    t_venv = time.perf_counter() - t0
    env = _clean_env()
    env["PYTHONPATH"] = str(REPO)  # the working tree under test, not a stale installed copy
    proc = subprocess.run(
        [str(py), "-c", CHECK, ",".join(BANNED), str(rpi4), str(jetson)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, out[-4000:]
    res = json.loads(line[len("RESULT "):])
    assert Path(res["prefix"]).resolve() == py.parent.parent.resolve(), "the check did not run in the runtime venv"
    assert res["importable"] == [], f"TensorFlow/Keras are importable in the runtime-only venv: {res['importable']}"
    assert res["attempts"] == [] and res["loaded"] == [], f"board-side code tried to import {res['attempts'] or res['loaded']}"
    assert res["rcs"] == [0, 0], out[-4000:]
    assert "checksums ok" in proc.stdout
    assert set(res["results"]) == expected
    for aid, (ok, skipped, msg) in res["results"].items():
        assert ok and not skipped, msg
    print(f"runtime venv ready in {t_venv:.1f} s; {len(expected)} artifacts checked in {time.perf_counter() - t0 - t_venv:.1f} s")
