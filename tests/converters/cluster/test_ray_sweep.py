"""Tests for `--ray` (converters.cluster.ray_sweep): sweeps on a local Ray with 2 CPUs, a killed worker, resume, errors.

The sweeps after the first share one local Ray (``local_ray``): a sweep uses a Ray this process already
joined. Its workers kill themselves on request (ray_sweep.CRASH_ENV), the way the OOM killer would.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from converters.cluster import ray_sweep as rs
from converters.convert import command as cv
from converters.train import sweep as tr
from converters.train.options import Schedule, SplitOptions, TrainOptions
from edge.core.atomic import sha256_file
from edgekit.cli import main
from tests.converters.convert.test_command import ONE_TARGET_PROFILE
from tests.converters.train.test_sweep import TINY_FAMILY, check_run_folder

needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="Ray is not installed (the cluster extra)")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")




def opts(run_dir: Path, family: Path, data_dir: Path, ray: rs.RayOptions | None, **kw) -> TrainOptions:
    base = dict(run_dir=run_dir, family=str(family), dataset="fashion_mnist", data_dir=str(data_dir), seed=0,
                schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=64, learning_rate=2e-3),
                splits=SplitOptions(val_fraction=0.1, calib_size=20, limit_train=None, limit_test=None),
                limit=4, progress=False, ray=ray)
    base.update(kw)
    return TrainOptions(**base)


def sweep(o: TrainOptions) -> tuple[list[tr.ModelResult], str]:
    buf = io.StringIO()
    return tr.train_sweep(o, out=buf), buf.getvalue()


def cli_args(run_dir: Path, family: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["train", str(run_dir), "--family", str(family), "--data-dir", str(data_dir), "--epochs", "1",
            "--calib-size", "20", "--no-progress", *extra]


# ---------------------------------------------------------------------------------------------- options, errors

def _parse(module, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_cli_flags():
    assert tr.options_from_args(_parse(tr, "RUN")).ray is None
    assert tr.options_from_args(_parse(tr, "RUN", "--ray")).ray == rs.RayOptions()
    assert tr.options_from_args(_parse(tr, "RUN", "--ray", "local")).ray == rs.RayOptions()
    o = tr.options_from_args(_parse(tr, "RUN", "--ray", "head:6379", "--cpus-per-task", "2",
                                    "--gpus-per-task", "0.5", "--max-retries", "0")).ray
    assert o == rs.RayOptions(address="head:6379", cpus_per_task=2.0, gpus_per_task=0.5, max_retries=0)
    assert o.threads == 2 and rs.RayOptions(cpus_per_task=0.5).threads == 1
    convert_args = _parse(cv, "RUN", "--profile", "rpi4", "--ray", "auto")
    assert rs.options_from_args(convert_args) == rs.RayOptions(address="auto")
    for bad in (["--cpus-per-task", "0"], ["--cpus-per-task", "x"], ["--gpus-per-task", "-1"],
                ["--max-retries", "-1"], ["--max-retries", "1.5"]):
        with pytest.raises(SystemExit):
            _parse(tr, "RUN", "--ray", *bad)
    with pytest.raises(ValueError, match="--max-retries only apply with --ray"):
        tr.options_from_args(_parse(tr, "RUN", "--max-retries", "3"))
    with pytest.raises(ValueError, match="--cpus-per-task must be > 0"):
        rs.RayOptions(cpus_per_task=0)


def test_addresses():
    assert rs._host_port("10.0.0.5:6380") == ("10.0.0.5", 6380)
    assert rs._host_port("head") == ("head", 6379)
    assert rs._host_port("ray://head") == ("head", 10001)
    assert rs._host_port("ray://head:9999") == ("head", 9999)
    assert rs._host_port("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ValueError, match="port 'x' is not a number"):
        rs._host_port("head:x")


def test_without_ray_installed_says_which_extra(tmp_path, family, data_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    rc = main(cli_args(tmp_path / "run", family, data_dir, "--ray"))
    err = capsys.readouterr().err
    assert rc == 2 and "edgekit train: error: --ray needs Ray" in err and "pip install 'edgekit[cluster]'" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    rc = main(["convert", str(tmp_path / "run"), "--profile", "rpi4", "--ray"])
    err = capsys.readouterr().err
    assert rc == 2 and "edgekit convert: error: --ray needs Ray" in err and "edgekit[cluster]" in err


@needs_ray
def test_unreachable_address_is_a_clear_error(tmp_path, family, data_dir, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(cli_args(tmp_path / "run", family, data_dir, "--ray", f"127.0.0.1:{port}"))
    err = capsys.readouterr().err
    assert rc == 2 and f"edgekit train: error: cannot reach a Ray cluster at 127.0.0.1:{port}" in err
    assert "refused" in err and "--ray without an address" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was started


@needs_ray
@pytest.mark.slow
def test_an_address_that_is_no_ray_head_times_out_with_a_clear_error():
    # ray.init would retry a port that accepts connections but speaks no Ray forever; run it in a child
    # process, whose stuck connecting thread must not keep it alive.
    code = ("import sys; from converters.cluster import ray_sweep as rs\n"
            "try:\n"
            "    with rs.ray_session(rs.RayOptions(address=sys.argv[1], connect_timeout_s=3)): pass\n"
            "except RuntimeError as exc:\n"
            "    print(exc); sys.exit(3)\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        address = f"127.0.0.1:{s.getsockname()[1]}"
        proc = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
    assert f"no Ray cluster answered at {address} within 3s; check the address" in proc.stdout


HEAD = """
import logging, sys
import ray
ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
print(ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()  # runs until the test closes stdin
"""


@needs_ray
@pytest.mark.slow
def test_sweep_on_an_existing_cluster(tmp_path, family, data_dir):
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(rs.CRASH_ENV, None)
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=repo)
    try:
        ready, _, _ = select.select([head.stdout], [], [], 120)
        address = head.stdout.readline().strip() if ready else ""
        assert address, "the head did not start"
        cmd = [sys.executable, "-m", "edgekit.cli", *cli_args(tmp_path / "run", family, data_dir, "--limit", "2",
                                                              "--ray", address)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"ray: the Ray cluster at {address} (2 CPU, 0 GPU)" in proc.stdout
    assert sum(ln.rstrip().endswith(" trained") for ln in proc.stdout.splitlines()) == 2
    check_run_folder(tmp_path / "run", 2)


@needs_ray
def test_more_cpus_per_task_than_the_local_ray_has():
    import ray

    assert not ray.is_initialized()
    with pytest.raises(ValueError, match=r"--cpus-per-task 4 is more than the 2 CPU\(s\) of the local Ray"):
        with rs.ray_session(rs.RayOptions(cpus_per_task=4, local_cpus=2)):
            pass
    assert not ray.is_initialized()


# ---------------------------------------------------------------------------------------------- train

@needs_ray
@pytest.mark.slow
def test_sweep_on_a_local_ray_started_for_it_then_resume(tmp_path, family, data_dir):
    import ray

    # The first Ray test in this file: the sweep starts its own local Ray and shuts it down.
    assert not ray.is_initialized()
    run_dir = tmp_path / "run"
    results, text = sweep(opts(run_dir, family, data_dir, rs.RayOptions(local_cpus=2)))
    assert not ray.is_initialized()
    assert [r.status for r in results] == ["trained"] * 4
    assert "ray: a local Ray started for this run (2 CPU, 0 GPU)" in text and "epoch 1/1" in text
    assert sum(ln.startswith("done ") for ln in text.splitlines()) == 4
    check_run_folder(run_dir, 4)
    assert "total: 4 models (4 trained now, 0 resumed)" in tr.format_table(results, 1.0)

    # Rerun: what is finished is skipped (no Ray needed), files untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    results2, text2 = sweep(opts(run_dir, family, data_dir, rs.RayOptions(local_cpus=2)))
    assert [r.status for r in results2] == ["resumed"] * 4 and "ray:" not in text2
    assert [r.test_accuracy for r in results2] == [r.test_accuracy for r in results]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == mtimes


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray with 2 CPUs for the rest of the module; yields the folder of crash markers."""
    ray = pytest.importorskip("ray")
    crash_dir = tmp_path_factory.mktemp("crash")
    saved = os.environ.get(rs.CRASH_ENV)
    os.environ[rs.CRASH_ENV] = str(crash_dir)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield crash_dir
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop(rs.CRASH_ENV, None)
        else:
            os.environ[rs.CRASH_ENV] = saved


def _ids(family: Path, n: int) -> list[str]:
    from converters.family.toml_file import load_family

    return [s.model_id for s in load_family(str(family)).expand(limit=n)]


def _tf_in_a_task(opts: rs.RayOptions):
    from converters.cluster import ray_sweep

    ray_sweep.init_worker(opts)
    import tensorflow as tf

    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(), os.environ.get("CUDA_VISIBLE_DEVICES"))


_tf_in_a_task.__module__ = "__main__"  # sent to the workers by value: they need not import this test module


@needs_ray
@pytest.mark.slow
def test_tensorflow_in_a_task_has_the_task_cpus_as_threads_and_no_gpu(local_ray):
    o = rs.RayOptions()
    results = list(rs.run_tasks(_tf_in_a_task, [("a", (o,)), ("b", (o,))], o))
    assert [r.value for r in results] == [(1, 1, "")] * 2


@pytest.fixture(scope="module")
def retried_run(local_ray, tmp_path_factory, family, data_dir):
    """Two specs trained on Ray; the worker training the second is killed once, after training, before returning."""
    victim = _ids(family, 2)[1]
    (local_ray / f"{victim}.crash").write_text("1")
    run_dir = tmp_path_factory.mktemp("retried") / "run"
    results, text = sweep(opts(run_dir, family, data_dir, rs.RayOptions(max_retries=1), limit=2))
    return run_dir, victim, results, text


@needs_ray
@pytest.mark.slow
def test_killed_worker_is_retried_and_its_spec_finished(retried_run, local_ray):
    run_dir, victim, results, text = retried_run
    assert (local_ray / f"{victim}.crash").read_text() == "0"  # its worker was killed once
    assert [r.status for r in results] == ["trained", "trained"]
    assert "the Ray this process already joined (2 CPU, 0 GPU)" in text and "FAIL" not in text
    check_run_folder(run_dir, 2)


@needs_ray
@pytest.mark.slow
def test_task_that_keeps_dying_is_reported_the_sweep_goes_on_and_a_rerun_retries_it(
        tmp_path, local_ray, family, data_dir, capsys):
    first, victim = _ids(family, 2)
    marker = local_ray / f"{victim}.crash"
    marker.write_text("5")
    run_dir = tmp_path / "run"
    rc = main(cli_args(run_dir, family, data_dir, "--limit", "2", "--ray", "--max-retries", "0"))
    cap = capsys.readouterr()
    assert rc == 1, cap.err[-2000:]
    assert f"FAIL {victim}: its worker died (1 try)" in cap.out and "a rerun retries it" in cap.out
    rows = {ln.split()[0]: ln.split()[-1] for ln in cap.out.splitlines() if ln.startswith("c1-")}
    assert rows == {first: "trained", victim: "failed"}
    assert "1 trained now, 0 resumed, 1 failed" in cap.out
    assert "1 spec(s) failed" in cap.err and "Rerun the same command" in cap.err
    assert marker.read_text() == "4"  # tried once, not retried
    assert not (run_dir / "models" / victim).exists()  # nothing of a failed task reaches the run folder
    check_run_folder(run_dir, 1)

    marker.unlink()
    rc = main(cli_args(run_dir, family, data_dir, "--limit", "2", "--ray", "--max-retries", "0"))
    out = capsys.readouterr().out
    assert rc == 0
    assert {ln.split()[0]: ln.split()[-1] for ln in out.splitlines() if ln.startswith("c1-")} == {
        first: "resumed", victim: "trained"}
    check_run_folder(run_dir, 2)


@needs_ray
@pytest.mark.slow
def test_ensembles_wait_for_every_member_then_are_built_here(tmp_path, local_ray, data_dir):
    fam = tmp_path / "ens.toml"
    fam.write_text(TINY_FAMILY + '\n[[ensemble]]\ntop = 2\nname = "top2"\n')
    first, victim = _ids(fam, 2)
    (local_ray / f"{victim}.crash").write_text("1")
    run_dir = tmp_path / "run"
    results, text = sweep(opts(run_dir, fam, data_dir, rs.RayOptions(max_retries=0), limit=2))
    assert [r.status for r in results] == ["trained", "failed"]
    assert "note: 1 spec(s) failed; the [[ensemble]]s are built once every spec is finished" in text

    results, text = sweep(opts(run_dir, fam, data_dir, rs.RayOptions(max_retries=0), limit=2))
    assert [r.status for r in results] == ["resumed", "trained", "built"]
    ens = json.loads((run_dir / "models" / results[2].model_id / "train.json").read_text())
    assert ens["kind"] == "ensemble" and sorted(ens["members"]) == sorted([first, victim])


# ---------------------------------------------------------------------------------------------- convert

@needs_ray
@pytest.mark.slow
def test_convert_on_ray_failure_rerun_and_skip(retried_run, local_ray, tmp_path):
    src, _, _, _ = retried_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    profile = tmp_path / "one.toml"
    profile.write_text(ONE_TARGET_PROFILE)
    victim = _ids_in(run_dir)[0]
    (local_ray / f"{victim}.crash").write_text("1")

    # The task of `victim` dies and is not retried: its artifact fails, the other model's is built.
    out = io.StringIO()
    res = cv.convert_run(run_dir, [str(profile)], out=out, progress=False, ray=rs.RayOptions(max_retries=0))
    assert {o.model_id: o.action for o in res.outcomes} == {victim: "failed", _ids_in(run_dir)[1]: "built"}
    assert f"FAIL  {victim}: its worker died" in out.getvalue()
    assert [a.model_id for a in res.manifest.artifacts] == [_ids_in(run_dir)[1]]

    # A rerun on Ray builds only the missing artifact; the driver wrote every file and the manifest.
    res = cv.convert_run(run_dir, [str(profile)], out=io.StringIO(), progress=False, ray=rs.RayOptions())
    assert {o.model_id: o.action for o in res.outcomes} == {victim: "built", _ids_in(run_dir)[1]: "skip"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["artifacts"]) == 2
    for a in manifest["artifacts"]:
        assert sha256_file(run_dir / a["path"]) == a["sha256"] and a["status"] == "ok"
        assert a["source_sha256"] == sha256_file(run_dir / "models" / a["model_id"] / "model.keras")
    assert sorted(p.name for p in (run_dir / "artifacts").iterdir()) == sorted(
        Path(a["path"]).name for a in manifest["artifacts"])

    # Without Ray, the same run folder reads as converted: everything is skipped.
    res = cv.convert_run(run_dir, [str(profile)], out=io.StringIO(), progress=False)
    assert [o.action for o in res.outcomes] == ["skip", "skip"]


def _ids_in(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "models").iterdir())
