"""Tests for benchmarks.evaluate.daemon_proc: the one launcher of the daemon (and of any server that prints its URL)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from benchmarks.evaluate.daemon_proc import Daemon, serve_argv
from tests.benchmarks._eval_fixtures import make_eval_bundle

# A stand-in server: reports what the launcher gave it, prints its URL, waits to be stopped.
FAKE = (
    "import os, resource, sys, time\n"
    "print('cpus', sorted(os.sched_getaffinity(0)), 'nofile', resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    "print('token', os.environ.get('EDGEKIT_TOKEN'), 'cwd', os.getcwd())\n"
    "print('to stderr', file=sys.stderr, flush=True)\n"
    "print('listening on http://127.0.0.1:8123/', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture(scope="module")
def evb(tmp_path_factory):
    return make_eval_bundle(tmp_path_factory.mktemp("daemon_proc"))


def test_daemon_that_fails_to_start_is_reported(evb, tmp_path):
    d = Daemon(serve_argv(str(evb.bundle), str(tmp_path / "missing.json"), "adaptive", None, "best-effort", None),
               tmp_path / "d.log", start_timeout_s=60)
    with pytest.raises(RuntimeError, match="exited with status 2") as ei:
        d.start()
    assert "missing.json" in str(ei.value)  # the daemon's own error, from its log
    assert d.proc.poll() is not None


def test_output_in_memory_cpus_nofile_env_and_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TOKEN", "from-the-caller")
    cpu = min(os.sched_getaffinity(0))
    with Daemon([sys.executable, "-c", FAKE], start_timeout_s=30, cpus={cpu}, nofile=256,
                env={"EDGEKIT_TOKEN": None}, cwd=tmp_path) as d:
        assert d.url == "http://127.0.0.1:8123" and (d.host, d.port) == ("127.0.0.1", 8123)
        assert f"cpus [{cpu}] nofile 256" in d.log and "token None" in d.log and str(tmp_path) in d.log
        assert any("listening on" in line for line in d.stdout)
        deadline = time.monotonic() + 10  # stderr has its own reader thread: it may lag behind stdout
        while not d.stderr and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.stderr == ["to stderr\n"]
        assert d.start() == d.url  # already started: the same URL, no second process
    assert d.proc.poll() is not None


def test_output_to_a_log_file_and_the_timeout(tmp_path):
    d = Daemon([sys.executable, "-c", FAKE.replace("listening on", "still starting")], tmp_path / "x.log",
               start_timeout_s=1.0)
    with pytest.raises(RuntimeError, match="did not print 'listening on' within 1 s") as ei:
        d.start()
    assert "still starting" in str(ei.value) and str(tmp_path / "x.log") in str(ei.value)
    assert d.stdout == [] and "to stderr" in (tmp_path / "x.log").read_text()
