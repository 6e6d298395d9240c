"""Tests for the device profile loader: built-ins parse, bad files name the key."""

import pytest

import device_profiles as dp


def test_builtin_profiles_load():
    names = dp.builtin_names()
    for want in ("rpi4", "rpi5", "jetson-orin-nano", "jetson-nano", "desktop-cpu", "desktop-cuda"):
        assert want in names
    rpi = dp.load_profile("rpi4")
    assert rpi.arch == "aarch64"
    assert rpi.formats() == ("tflite",)
    assert rpi.settings[0].backend == "litert" and rpi.settings[0].threads == 4 and rpi.settings[0].xnnpack
    orin = dp.load_profile("jetson-orin-nano")
    assert orin.formats() == ("onnx",)
    assert orin.settings[0].providers[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert orin.targets[0].precision == "fp16"  # fp16 preferred: listed first
    desk = dp.load_profile("desktop-cpu")
    assert set(desk.formats()) == {"tflite", "onnx"}
    assert len(desk.targets) == 7
    assert desk.settings_for("onnx")[0].backend == "onnxruntime"


def _write(tmp_path, text):
    p = tmp_path / "mine.toml"
    p.write_text(text)
    return p


GOOD = """
name = "mine"
arch = "aarch64"
memory_budget_mb = 100
[[build]]
format = "tflite"
precisions = ["fp32", "int8"]
[[runtime]]
backend = "litert"
threads = 2
"""


def test_user_profile_by_path(tmp_path):
    p = dp.load_profile(_write(tmp_path, GOOD))
    assert p.name == "mine" and p.builds("tflite", "int8") and not p.builds("tflite", "fp16")
    assert p.settings[0].name == "litert-t2"


@pytest.mark.parametrize(
    "change, key",
    [
        (("threads = 2", "threads = 2\ncolour = 'red'"), "runtime[0].colour"),
        (("threads = 2", "threads = -1"), "runtime[0].threads"),
        (("memory_budget_mb = 100", "memory_budget_mb = -5"), "memory_budget_mb"),
        (('"fp32", "int8"', '"fp32", "int4"'), "build[0].precisions"),
        (('backend = "litert"', 'backend = "tensorrt"'), "runtime[0].backend"),
        (('arch = "aarch64"', 'arch = "sparc"'), "arch"),
        (("memory_budget_mb = 100\n", "memory_budget_mb = 100\nspeed = 3\n"), "speed"),
        (('backend = "litert"', 'backend = "onnxruntime"'), "runtime[0].backend"),
    ],
)
def test_bad_profile_names_the_key(tmp_path, change, key):
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(dp.ProfileError) as exc:
        dp.load_profile(_write(tmp_path, text))
    assert f"'{key}'" in str(exc.value)


def test_bad_toml_and_unknown_name(tmp_path):
    with pytest.raises(dp.ProfileError, match="not valid TOML"):
        dp.load_profile(_write(tmp_path, "name = [unclosed"))
    with pytest.raises(dp.ProfileError, match="unknown profile 'nope'; available: \\["):
        dp.load_profile("nope")


def test_profiles_cli_lists_all(capsys):
    from edgekit.cli import main

    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in dp.builtin_names():
        assert name in out


def test_builtin_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "rpi4").mkdir()
    monkeypatch.chdir(tmp_path)
    assert dp.load_profile("rpi4").name == "rpi4"
