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
from edge.bundle.predictive import DRIFT_MARGIN, check_drift, check_margin
from edge.bundle.reader import Bundle, BundleWarning, open_bundle
from edge.core.textable import format_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder or .tar.gz")
    p.add_argument("--profile", default=None,
                   help="device profile whose runtime settings to use (default: this host's)")
    p.add_argument("--artifact", action="append", default=None, metavar="ID",
                   help="check only this artifact (repeatable)")
    p.add_argument("--cache-dir", default=None, help="where to extract an archive (default: beside it)")
    p.add_argument("--drift-margin", type=float, default=DRIFT_MARGIN, metavar="ACC",
                   help="with a predictive test in the bundle: how far below the workstation's accuracy (0..1) a "
                        f"predicted accuracy fails the check (default {DRIFT_MARGIN})")


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def _acc(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def verify_bundle(bundle: Bundle, profile, artifact_ids: Iterable[str] | None = None,
                  drift_margin: float = DRIFT_MARGIN) -> list[dict[str, Any]]:
    """Load each artifact with each of the profile's settings for its format and run the canary, and the
    predictive test where the bundle has one (status "drift" when its prediction falls more than
    ``drift_margin`` below the workstation's accuracy)."""
    from edge.backends import BackendUnavailable, get_backend

    ids = list(artifact_ids) if artifact_ids else [a.artifact_id for a in bundle.artifacts]
    tests = bundle.predictive_test(ids)
    rows: list[dict[str, Any]] = []
    for aid in ids:
        rec = bundle.artifact(aid)
        settings = profile.settings_for(rec.format)
        if not settings:
            rows.append(dict(artifact=aid, setting="-", provider="-", status="skip", max_diff=float("nan"),
                             message=f"profile {profile.name} has no runtime for {rec.format}"))
            continue
        for s in settings:
            row = dict(artifact=aid, setting=s.name, provider="-", max_diff=float("nan"), predicted=None,
                       expected=rec.host_accuracy)
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
                dc = check_drift(tests[aid], model, rec.host_accuracy, drift_margin) if aid in tests else None
            finally:
                model.close()
            status = "skip" if res.skipped else ("ok" if res.ok else "FAIL")
            message = res.message
            if dc is not None:
                row |= dict(predicted=dc.predicted, expected=dc.expected)
                message = f"{message}; {dc.message}"
                if dc.drift and status != "FAIL":
                    status = "drift"
            rows.append(row | dict(status=status, max_diff=res.max_abs_diff, message=message))
    return rows


def run(args: argparse.Namespace) -> int:
    from device_profiles import host_label, host_profile_name, load_profile

    check_margin(args.drift_margin, "--drift-margin")
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
    rows = verify_bundle(bundle, profile, args.artifact, drift_margin=args.drift_margin)
    has_test = bundle.has_predictive_test
    print(format_table(["artifact", "setting", "provider", "canary", "max diff"]
                       + (["predicted acc", "workstation acc"] if has_test else []),
                       [[r["artifact"], r["setting"], r["provider"], r["status"], _fmt(r["max_diff"])]
                        + ([_acc(r.get("predicted")), _acc(r.get("expected"))] if has_test else []) for r in rows],
                       align="llllr" + ("rr" if has_test else "")))
    print("  (max diff: the largest difference between these canary scores and the workstation's; "
          "each precision has its tolerance, docs/canary.md)")
    if has_test:
        print(f"  (predicted acc: from the bundle's predictive test, its images and regressor; 'drift' when more "
              f"than {args.drift_margin:.3f} below the workstation's accuracy)")
    else:
        print("  (no predictive test in this bundle: build it with 'edgekit bundle --predictive-test' to get a "
              "predicted accuracy per artifact)")
    failed = [r for r in rows if r["status"] in ("FAIL", "drift")]
    checked = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['status']}: {r['message']}",
                  file=sys.stderr if r["status"] in ("FAIL", "drift") else sys.stdout)
    drifted = sum(r["status"] == "drift" for r in rows)
    print(f"{len(checked)} ok, {len(failed)} failed{f' ({drifted} by drift)' if drifted else ''}, "
          f"{len(rows) - len(checked) - len(failed)} skipped")
    if failed:
        return 1
    if not checked:
        print(f"nothing was checked: profile {profile.name} runs none of this bundle's artifacts", file=sys.stderr)
        return 1
    print(f"next: edgekit bench {args.bundle} --profile {args.profile or profile.name} --out {profile.name}-table.json")
    return 0
