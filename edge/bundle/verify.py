"""`edgekit verify`: check a bundle's checksums and run every artifact's canary with a device profile's settings.

It says in one line at start when the profile does not describe this host (``device_profiles.host_mismatch``):
a canary that passes there proves the artifact on this host with the profile's settings, not on the board.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import Any, Iterable

from edge.artifacts.tensors import with_recorded_input
from edge.bundle.canary import check_canary
from edge.bundle.reader import Bundle, BundleWarning, open_bundle
from edge.core.textable import format_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder or .tar.gz")
    p.add_argument("--profile", default=None,
                   help="device profile whose runtime settings to use (default: this host's)")
    p.add_argument("--artifact", action="append", default=None, metavar="ID",
                   help="check only this artifact (repeatable)")
    p.add_argument("--cache-dir", default=None, help="where to extract an archive (default: beside it)")


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def verify_bundle(bundle: Bundle, profile, artifact_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Load each artifact with each of the profile's settings for its format and run the canary."""
    from edge.backends import BackendUnavailable, get_backend

    ids = list(artifact_ids) if artifact_ids else [a.artifact_id for a in bundle.artifacts]
    rows: list[dict[str, Any]] = []
    for aid in ids:
        rec = bundle.artifact(aid)
        settings = profile.settings_for(rec.format)
        if not settings:
            rows.append(dict(artifact=aid, setting="-", provider="-", status="skip", max_diff=float("nan"),
                             message=f"profile {profile.name} has no runtime for {rec.format}"))
            continue
        for s in settings:
            row = dict(artifact=aid, setting=s.name, provider="-", max_diff=float("nan"))
            try:
                model = with_recorded_input(get_backend(s.backend).load(bundle.artifact_path(aid), s), rec.input)
            except (BackendUnavailable, ValueError) as exc:
                rows.append(row | dict(status="FAIL", message=f"{aid}: cannot load with {s.name}: {exc}"))
                continue
            except Exception as exc:  # a runtime's own error type: report it as this row's failure
                message = f"{aid}: cannot load with {s.name}: {type(exc).__name__}: {exc}"
                rows.append(row | dict(status="FAIL", message=message))
                continue
            try:
                row["provider"] = model.provider
                res = check_canary(bundle, aid, model)
            finally:
                model.close()
            status = "skip" if res.skipped else ("ok" if res.ok else "FAIL")
            rows.append(row | dict(status=status, max_diff=res.max_abs_diff, message=res.message))
    return rows


def run(args: argparse.Namespace) -> int:
    from device_profiles import host_label, host_profile_name, load_profile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BundleWarning)
        bundle = open_bundle(args.bundle, verify=True, cache_dir=args.cache_dir)
    profile = load_profile(args.profile or host_profile_name())
    print(f"bundle {bundle.source}: profile {bundle.profile}, {len(bundle.artifacts)} artifacts, checksums ok")
    if bundle.root != bundle.source:
        print(f"  extracted to {bundle.root}")
    for w in caught:
        if issubclass(w.category, BundleWarning):
            print(f"  warning: {w.message}")
    if bundle.profile and bundle.profile != profile.name:
        print(f"  note: bundle was built for {bundle.profile}; running it with the settings of {profile.name}")
    mismatch = host_label(profile, what="canary results")
    if mismatch:
        print(f"  note: {mismatch}")
    rows = verify_bundle(bundle, profile, args.artifact)
    print(format_table(["artifact", "setting", "provider", "canary", "max diff"],
                       [[r["artifact"], r["setting"], r["provider"], r["status"], _fmt(r["max_diff"])] for r in rows],
                       align="llllr"))
    print("  (max diff: the largest difference between these canary scores and the workstation's; "
          "each precision has its tolerance, docs/canary.md)")
    failed = [r for r in rows if r["status"] == "FAIL"]
    checked = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['status']}: {r['message']}", file=sys.stderr if r["status"] == "FAIL" else sys.stdout)
    print(f"{len(checked)} ok, {len(failed)} failed, {len(rows) - len(checked) - len(failed)} skipped")
    if failed:
        return 1
    if not checked:
        print(f"nothing was checked: profile {profile.name} runs none of this bundle's artifacts", file=sys.stderr)
        return 1
    print(f"next: edgekit bench {args.bundle} --profile {args.profile or profile.name} --out {profile.name}-table.json")
    return 0
