"""The daemon's lifecycle (edge/serve/server.py): the start-up report, variants refused at start-up, SIGTERM's
drain, SIGHUP's reload, and the signal handlers put back, in this process and as `edgekit serve`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.serve.command import add_arguments
from edge.serve.config import config_from_args
from edge.serve.server import Server
from tests.edge._daemon_http import INFER, VALID, call, infer_doc, jcall
from tests.edge._fixtures import DaemonProc, start_daemon
from tests.edge.serve.test_dataplane import _wait, _write_table

# ----------------------------------------------------------------------------- in this process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Addr:
    """What the HTTP helpers need of a daemon: its host and port."""

    def __init__(self, port: int):
        self.host, self.port = "127.0.0.1", port


def _serve_in_process(fx, drive, *argv: str, table: Path | None = None) -> tuple[int, _Addr]:
    """Run ``Server`` in this (the main) thread while ``drive(addr)`` talks to it from another thread,
    then SIGTERM this process; returns what ``run`` returned and the address it served on."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    port = _free_port()
    args = p.parse_args([str(fx.bundle), "--table", str(table or fx.selected_table), "--profile", str(fx.profile),
                         "--port", str(port), *argv])
    addr = _Addr(port)
    errors: list[BaseException] = []
    stopped = threading.Event()

    def driver() -> None:
        try:
            assert _wait(lambda: _answers(addr) or stopped.is_set(), 60), "the in-process daemon did not come up"
            drive(addr)
        except BaseException as exc:  # reported by the test, after the server stopped
            errors.append(exc)
        finally:
            if not stopped.is_set():
                os.kill(os.getpid(), signal.SIGTERM)

    # Should the server stop before the driver's SIGTERM, the signal must not end pytest.
    default = signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
    if default:
        signal.signal(signal.SIGTERM, lambda *a: None)
    t = threading.Thread(target=driver, daemon=True)
    t.start()
    try:
        rc = Server(config_from_args(args)).run()
    finally:
        stopped.set()
        t.join(30)
        if default:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if errors:
        raise errors[0]
    return rc, addr


def _answers(addr) -> bool:
    try:
        return jcall(addr, "GET", "/v2/health/live")[0] == 200
    except OSError:
        return False


def test_in_process_the_signal_handlers_are_put_back_after_the_drain(fx, capsys):
    seen: list[int] = []

    def mine(signum, frame):  # stands for the embedding program's own handlers
        seen.append(signum)

    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        def drive(addr):
            assert jcall(addr, "POST", INFER, VALID)[0] == 200

        rc, addr = _serve_in_process(fx, drive)
        assert rc == 0 and seen == []  # the daemon's handlers took SIGTERM while it ran
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            assert signal.getsignal(s) is mine, s
        captured = capsys.readouterr()
        assert f"listening on http://127.0.0.1:{addr.port}" in captured.out
        assert "finishing queued work" in captured.err and "stopped; requests: met=1" in captured.err
        with pytest.raises(OSError):  # the listener is closed
            socket.create_connection(("127.0.0.1", addr.port), timeout=2).close()
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_in_process_with_busy_polling_every_request_is_served_and_the_start_up_says_so(fx, capsys):
    def drive(addr):
        for deadline in (10_000, 5_000, 10_000):
            status, _, doc = jcall(addr, "POST", INFER, infer_doc(deadline=deadline))
            assert status == 200 and doc["parameters"]["deadline_met"], doc

    rc, _ = _serve_in_process(fx, drive, "--spin-us", "2000")
    captured = capsys.readouterr()
    assert rc == 0 and "busy polling 2000 us after each answer" in captured.out
    assert "stopped; requests: met=3" in captured.err


def test_in_process_sighup_reloads_the_table(fx, tmp_path):
    table = tmp_path / "selected.json"
    _write_table(fx.selected_table, table, keep=[fx.variants[0]])
    before = signal.getsignal(signal.SIGHUP)

    def drive(addr):
        assert jcall(addr, "POST", INFER, infer_doc(deadline=10_000))[2]["parameters"]["variant"] == fx.variants[0]
        gen = jcall(addr, "GET", "/admin/status")[2]["generation"]
        shutil.copy(fx.selected_table, table)
        os.kill(os.getpid(), signal.SIGHUP)
        assert _wait(lambda: jcall(addr, "GET", "/admin/status")[2]["generation"] == gen + 1, 30)
        assert jcall(addr, "POST", INFER, infer_doc(deadline=10_000))[2]["parameters"]["variant"] == fx.variants[-1]

    rc, _ = _serve_in_process(fx, drive, table=table)
    assert rc == 0 and signal.getsignal(signal.SIGHUP) == before


# ----------------------------------------------------------------------------- the process


def test_startup_prints_memory_and_no_tensorflow(srv):
    out = "".join(srv.stdout)
    assert "resident memory with variants loaded:" in out and " MB" in out
    assert "tensorflow in sys.modules: no" in out
    assert f"listening on http://127.0.0.1:{srv.port}" in out


def _corrupt_canary(fx, dest: Path, artifact: str) -> Path:
    """A copy of the bundle whose canary scores for ``artifact`` are wrong (checksums updated)."""
    from edge.core.atomic import sha256_file

    shutil.copytree(fx.bundle, dest)
    with np.load(dest / "canary.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[f"scores/{artifact}"] = arrays[f"scores/{artifact}"] + np.linspace(-5, 5, 10, dtype=np.float32)
    np.savez(dest / "canary.npz", **arrays)
    m = json.loads((dest / "manifest.json").read_text())
    m["extra"]["files"]["canary.npz"] = sha256_file(dest / "canary.npz")
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_canary_failure_excludes_the_variant(fx, tmp_path):
    mid = fx.variants[1]
    bundle = _corrupt_canary(fx, tmp_path / "bundle", mid.split("@")[0])
    with DaemonProc(bundle, fx.selected_table, profile=fx.profile) as d:
        assert f"variant {mid} is NOT ready" in d.log and "canary FAILED" in d.log
        s, _, doc = jcall(d, "GET", "/v2/models/edgekit")
        status = {x["variant"]: x for x in doc["variants"]}
        assert status[mid]["ready"] is False and "canary" in status[mid]["reason"]
        assert status[fx.variants[0]]["ready"] and status[fx.variants[-1]]["ready"]
        assert jcall(d, "GET", "/v2/health/ready")[0] == 200
        used = {jcall(d, "POST", INFER, infer_doc(deadline=dl))[2]["parameters"]["variant"] for dl in (0.001, 0.5, 5, 10_000)}
        assert mid not in used
        assert 'edgekit_variant_ready{variant="%s"} 0' % mid in call(d, "GET", "/metrics")[2].decode()


def test_all_variants_failing_the_canary_stops_the_daemon(fx, tmp_path):
    bundle = _corrupt_canary(fx, tmp_path / "bundle", fx.variants[0].split("@")[0])
    table = tmp_path / "sel.json"
    _write_table(fx.selected_table, table, keep=[fx.variants[0]])
    with pytest.raises(RuntimeError, match="rc=2") as e:
        DaemonProc(bundle, table, profile=fx.profile)
    assert "passed its canary check" in str(e.value)


def test_graceful_shutdown_finishes_queued_work_and_token_from_env(fx):
    d = start_daemon("--inject-delay-ms", "200", env={"EDGEKIT_TOKEN": "envtok"})
    try:
        assert jcall(d, "GET", "/v2/models/edgekit")[0] == 401
        out: dict = {}
        hdr = {"Authorization": "Bearer envtok"}

        def go(k):
            out[k] = call(d, "POST", INFER, json.dumps(infer_doc(deadline=10_000)).encode(), hdr)
        threads = [threading.Thread(target=go, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        d.signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert [out[k][0] for k in range(3)] == [200, 200, 200]
        assert d.proc.wait(20) == 0
        assert "finishing queued work" in d.log and "met=3" in d.log
    finally:
        d.stop()


def test_sighup_with_a_bad_table_keeps_serving(fx, tmp_path):
    table = tmp_path / "selected.json"
    shutil.copy(fx.selected_table, table)
    with DaemonProc(fx.bundle, table, profile=fx.profile) as d:
        table.write_text("{ not json")
        d.signal(signal.SIGHUP)
        assert _wait(lambda: "reload failed" in d.log)
        assert jcall(d, "GET", "/v2/health/ready")[0] == 200
        assert jcall(d, "POST", INFER, VALID)[0] == 200
        _write_table(fx.selected_table, table, keep=[fx.variants[0]])
        d.signal(signal.SIGHUP)
        assert _wait(lambda: "reloaded" in d.log)
        assert jcall(d, "POST", INFER, infer_doc(deadline=10_000))[2]["parameters"]["variant"] == fx.variants[0]

