"""A child Python that runs this process's own code: the environment for ``python -m edgekit.cli ...`` children.

``python -m`` puts the child's working folder first on ``sys.path``. Started from another checkout of the project
(an older clone holding a demo bundle, say), the child would import that checkout's ``edge`` and ``edgekit``, not
the parent's: an evaluation would measure another version's daemon. So the child gets ``PYTHONSAFEPATH=1``
(Python 3.11 and later: the working folder is not put on ``sys.path``; older ones ignore it) and a ``PYTHONPATH``
led by the folder this process's packages come from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

CODE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding edge/, edgekit/, benchmarks/


def same_code_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's environment) for a child ``python -m`` of this code."""
    out = dict(os.environ if env is None else env)
    rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != CODE_ROOT]
    out["PYTHONPATH"] = os.pathsep.join([CODE_ROOT, *rest])
    out["PYTHONSAFEPATH"] = "1"
    return out
