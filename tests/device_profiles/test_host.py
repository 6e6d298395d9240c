"""Tests for device_profiles.host: whether a profile describes the machine (architecture, cores, accelerator)."""

from __future__ import annotations

import device_profiles as dp
from device_profiles.host import Host, host_label, host_mismatch, mismatch_label, normal_arch

X86_2 = Host("x86_64", 2, frozenset())


def test_a_board_profile_on_a_two_core_workstation():
    rpi4 = dp.load_profile("rpi4")
    assert host_mismatch(rpi4, X86_2) == (
        "rpi4 is an aarch64 board, this host is x86_64",
        "its setting litert-xnnpack-t4 runs 4 threads on 2 cores",
    )
    assert host_label(rpi4, X86_2) == (
        "NOT A rpi4: rpi4 is an aarch64 board, this host is x86_64; its setting litert-xnnpack-t4 runs 4 threads "
        "on 2 cores; times are this host's with the settings of rpi4, not rpi4 times")
    assert host_mismatch(rpi4, Host("aarch64", 4, frozenset())) == ()  # a Pi 4
    assert host_mismatch(rpi4, Host("arm64", 4, None)) == ()  # macOS spells it arm64


def test_a_missing_accelerator_and_an_unknown_one():
    orin = dp.load_profile("jetson-orin-nano")
    why = host_mismatch(orin, Host("aarch64", 6, frozenset()))
    assert why == ("its setting ort-trt-cuda-cpu asks for an NVIDIA GPU, this host has none (the CPU provider runs it)",)
    assert host_mismatch(orin, Host("aarch64", 6, frozenset({"nvidia"}))) == ()
    assert host_mismatch(orin, Host("aarch64", 6, None)) == ()  # a table read elsewhere: cannot tell
    assert host_mismatch(dp.load_profile("desktop-cpu"), Host("x86_64", 8, frozenset())) == ()


def test_emulation_is_a_mismatch_of_its_own():
    why = host_mismatch(dp.load_profile("rpi5"), Host("aarch64", 4, frozenset(), "qemu-user 7.2"))
    assert why == ("this host emulates aarch64 (qemu-user 7.2)",)


def test_labels_and_arch_names():
    assert mismatch_label("rpi4", "") == "" and mismatch_label("rpi4", ()) == ""
    assert mismatch_label("rpi4", "x", what="canary results").endswith(
        "canary results are this host's with the settings of rpi4, not rpi4 canary results")
    assert [normal_arch(m) for m in ("AMD64", "arm64", "x86_64", "aarch64")] == ["x86_64", "aarch64"] * 2
    h = Host.detect()  # this machine: some architecture, at least one core
    assert h.machine and h.cores >= 1 and h.accelerators is not None
