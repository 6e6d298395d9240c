"""scripts/setup.sh on a platform without runtime wheels: a message that says what to do, no pip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_setup_as(tmp_path: Path, machine: str, extras: str = "runtime") -> subprocess.CompletedProcess:
    """Run setup.sh with a `uname` that reports ``machine`` (and Linux) first on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir()
    uname = fake / "uname"
    uname.write_text(f"#!/bin/sh\ncase \"$1\" in -m) echo {machine};; *) echo Linux;; esac\n")
    uname.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(REPO / "scripts/setup.sh"), extras], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.parametrize("machine", ["armv7l", "armv6l", "riscv64"])
def test_runtime_setup_on_a_board_without_wheels_stops_with_the_supported_list(tmp_path, machine):
    r = _run_setup_as(tmp_path, machine)
    assert r.returncode == 2
    assert f"Linux/{machine}" in r.stderr
    assert "no wheels" in r.stderr
    assert "64-bit Raspberry Pi OS" in r.stderr and "Jetson" in r.stderr
    assert "installing" not in r.stdout  # stopped before pip
    assert "Traceback" not in r.stderr + r.stdout

