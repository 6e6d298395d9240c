"""Tests for converters/family/listing.py: ``python -m converters.family.listing`` lists a family's ids, MACs and ensembles."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from converters.family.listing import main
from converters.family.specs import EnsembleSpec
from converters.family.toml_file import load_family


def test_lists_every_spec_with_its_macs_then_the_ensembles(capsys):
    assert main(["demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fam = load_family("demo")
    specs = fam.expand()
    assert [ln.split()[0] for ln in lines[: len(specs)]] == [s.model_id for s in specs]
    assert lines[0].endswith(f"{specs[0].estimate_macs((28, 28, 1)):,d} MACs")
    assert len(lines) == len(specs) + len(fam.ensembles)
    assert all(ln.endswith("id set when its members are trained") for ln in lines[len(specs):])  # all top = K


def test_explicit_ensemble_shows_its_id(tmp_path, capsys):
    p = tmp_path / "two.toml"
    p.write_text(textwrap.dedent("""
        [[space]]
        blocks = 1
        width = [4, 8]
        [[ensemble]]
        members = ["c1-f4-k3-max-d0-vip0-ps0", "c1-f8-k3-max-d0-vip0-ps0"]
        """))
    assert main([str(p)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    want = EnsembleSpec(("c1-f4-k3-max-d0-vip0-ps0", "c1-f8-k3-max-d0-vip0-ps0")).model_id
    assert last.startswith(f"{want}  ensemble of ")


def test_runs_as_a_module_without_tensorflow():
    res = subprocess.run([sys.executable, "-m", "converters.family.listing", "demo"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.splitlines()[0].endswith(" MACs"), res.stderr
    code = ("import sys; from converters.family.listing import main; main(['demo']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
