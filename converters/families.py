"""``python -m converters.families [FAMILY]``: list a family's model ids with their MACs, and its ensembles.

Family files are parsed in ``converters.family_file``; the specs they expand into are in
``converters.specs`` and ``converters.family_spec``; their Keras models in ``converters.keras_build``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from converters.family_file import load_family
from converters.specs import EnsembleSpec


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converters.families [FAMILY]``: the family's model ids and MACs, and its ensembles."""
    ap = argparse.ArgumentParser(prog="python -m converters.families", description=main.__doc__)
    ap.add_argument("family", nargs="?", default="demo", help="built-in family name or .toml path (default: demo)")
    args = ap.parse_args(argv)
    fam = load_family(args.family)
    shape = (*fam.input_size, 1)
    for spec in fam.expand():
        print(f"{spec.model_id}  {spec.estimate_macs(shape):>12,d} MACs")
    for e in fam.ensembles:
        if e.top is None:
            print(f"{EnsembleSpec(e.members, e.name).model_id}  ensemble of {list(e.members)}")
        else:
            print(f"{e.describe()}: id set when its members are trained")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
