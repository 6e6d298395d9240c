"""edge.core.spawn: a child started in another checkout's folder still runs this process's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge.core.spawn import CODE_ROOT, same_code_env

PROBE = "import edge; print(edge.__file__)"


def test_a_child_in_another_checkout_imports_this_code(tmp_path):
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "__init__.py").write_text("")  # another checkout's package, in the child's working folder
    plain = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(plain.stdout.strip()).resolve().parent == (tmp_path / "edge").resolve()  # what went wrong before
    ours = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, check=True,
                          env=same_code_env())
    assert Path(ours.stdout.strip()).resolve().parent == Path(CODE_ROOT) / "edge"


def test_the_environment_keeps_the_rest_of_pythonpath_once():
    env = same_code_env({"PYTHONPATH": os.pathsep.join(["/x", CODE_ROOT, "/y"]), "HOME": "/h"})
    assert env["PYTHONPATH"].split(os.pathsep) == [CODE_ROOT, "/x", "/y"] and env["PYTHONSAFEPATH"] == "1"
    assert env["HOME"] == "/h"
