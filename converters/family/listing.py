"""``python -m converters.family.listing [FAMILY]``: list a family's model ids with their MACs, and its ensembles.

Family files are parsed in ``converters.family.toml_file``; the specs they expand into are in
``converters.family.specs`` and ``converters.family.family``; their Keras models in ``converters.family.keras_build``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from converters.family.specs import EnsembleSpec
from converters.family.toml_file import load_family


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converters.family.listing [FAMILY]``: the family's model ids and MACs, and its ensembles."""
    ap = argparse.ArgumentParser(prog="python -m converters.family.listing", description=main.__doc__)
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
