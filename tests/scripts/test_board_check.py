"""The board check (scripts/board_check.py): its preconditions here, the whole check with EDGEKIT_BOARD_CHECK=1."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / f"scripts/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


root = _load("board_root")  # the emulated root: preconditions, debootstrap, mounts, chroot
bc = _load("board_check")  # the checks and the report


def test_not_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(root.BoardCheckError, match="must run as root.*sudo make board-check"):
        root.check_host()


def test_missing_tools_without_apt_get_say_which_packages(monkeypatch):
    monkeypatch.setattr(root.shutil, "which", lambda exe: None)
    with pytest.raises(root.BoardCheckError, match="qemu-user-static.*debootstrap|binfmt-support.*qemu-user-static"):
        root.ensure_tools(native=False)


def test_binfmt_that_cannot_be_mounted_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(root, "BINFMT", tmp_path / "binfmt_misc")  # no 'register' file: not mounted

    def refuse(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 32, "", "mount: permission denied")

    monkeypatch.setattr(root.subprocess, "run", refuse)
    with pytest.raises(root.BoardCheckError, match="cannot mount binfmt_misc.*permission denied.*privileged"):
        root.ensure_binfmt()


def test_the_arm_cpuinfo_names_no_board():
    info = root.pi_like_cpuinfo(2)
    assert info.count("processor\t:") == 2 and "CPU part\t: 0xd08" in info  # Cortex-A72
    assert "Raspberry" not in info and "Model" not in info


def test_verify_summary_reads_the_counts():
    out = "bundle x: ...\nsome table\n12 ok, 0 failed, 0 skipped\n"
    s = bc._verify_summary(out, 0)
    assert (s["canary_ok"], s["failed"], s["skipped"]) == (12, 0, 0)


@pytest.mark.skipif(os.environ.get("EDGEKIT_BOARD_CHECK") != "1",
                    reason="the board check needs root, the network and several minutes: set EDGEKIT_BOARD_CHECK=1")
def test_board_check_passes_on_emulated_aarch64():
    r = subprocess.run([sys.executable, str(REPO / "scripts/board_check.py")], capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "0 failed" in r.stdout
    assert "machine aarch64" in r.stdout
    assert "EMULATED" in r.stdout
