"""benchmarks/bench/sysinfo.py: the device header's fields and labels; an emulated machine is never presented as a board."""

from __future__ import annotations

import json

import benchmarks.bench.sysinfo as si
import device_profiles.host as host


def test_emulation_env_labels_the_table(monkeypatch):
    monkeypatch.setenv(si.EMULATION_ENV, "qemu-user 7.2 emulating aarch64 (QEMU_CPU=cortex-a72) on an x86_64 host")
    name = si.device_name()
    assert name.startswith("EMULATED aarch64: qemu-user 7.2") and "not board timings" in name
    info = si.device_info()
    assert info["cpu_model"] == name and info["extra"]["emulation"].startswith("qemu-user")


def test_arm_python_reading_an_x86_cpuinfo_is_emulation(monkeypatch):
    monkeypatch.delenv(si.EMULATION_ENV, raising=False)
    monkeypatch.setattr(si.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(host, "_read", lambda path: "processor : 0\nvendor_id : GenuineIntel\n" if "cpuinfo" in path else "")
    assert "QEMU" in si.emulation() and si.device_name().startswith("EMULATED")


def test_real_hardware_is_not_labelled(monkeypatch):
    monkeypatch.delenv(si.EMULATION_ENV, raising=False)
    monkeypatch.setattr(si.platform, "machine", lambda: "x86_64")
    assert si.emulation() == "" and si.device_name() == si.cpu_model()


def test_sysinfo_fields():
    from benchmarks.bench import sysinfo

    info = sysinfo.device_info()
    assert info["cores"] >= 1 and isinstance(info["governor"], str) and info["cpu_model"]
    assert json.dumps(info)  # JSON-serialisable for the header
    assert sysinfo.now_iso().endswith("+00:00")
