"""Tests for the demo driver: every stage's command line is one the real CLI accepts."""



from edgekit import demo
from edgekit.cli import build_parser, main


def test_every_stage_parses_with_the_real_cli(tmp_path):
    stages = demo._stages(tmp_path, "desktop-cpu", "demo", quick=True, requests=50)
    assert [s.name for s in stages][:3] == ["train", "convert", "bundle"]
    for st in stages:
        args = build_parser(only=st.argv[0]).parse_args(list(st.argv))
        assert args.command == st.argv[0]


def test_unknown_redo_stage_is_refused(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--redo", "nope"]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err


def test_demo_refuses_a_folder_of_another_profile(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "demo-state.json").write_text('{"profile": "rpi4", "family": "demo", "done": {}}')
    assert main(["demo", "--out", str(out), "--profile", "desktop-cpu"]) == 2
    assert "holds a demo for profile 'rpi4'" in capsys.readouterr().err


def test_cli_without_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_missing_dependency_gives_an_install_hint(monkeypatch, capsys):
    import sys
    import types

    mod = types.ModuleType("edgekit_fake_cmd")
    mod.add_arguments = lambda p: None

    def run(args):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    mod.run = run
    monkeypatch.setitem(sys.modules, "edgekit_fake_cmd", mod)
    import edgekit.cli as cli

    monkeypatch.setitem(cli.COMMANDS, "fake", ("edgekit_fake_cmd", "a command that needs TensorFlow"))
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert "tensorflow is not installed" in err and "train extra" in err
