"""Summaries of Definition 1 over model pairs: the class margins that tell a compatible pair
from one whose features are merely far from the old gallery, and the counts of pairs where
each inequality holds, by kind of pair (consecutive, across a replacement, within a segment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["class_margins", "summarize_pairs"]


def class_margins(d1: Mapping[str, Any]) -> dict:
    """E[d | different class] - E[d | same class], across models and within the old model.

    The different-class inequality of Definition 1 also holds when the new
    model's features are simply far from the old gallery whatever the class
    (incompatible models): then the cross-model margin collapses to about 0
    while the old model's own margin stays positive. These two numbers tell
    the two cases apart.
    """
    sn, so = d1["same"]["expect_new"]["mean"], d1["same"]["expect_old"]["mean"]
    dn, do = d1["diff"]["expect_new"]["mean"], d1["diff"]["expect_old"]["mean"]
    if None in (sn, so, dn, do):
        return {"cross_model": None, "old_model": None}
    return {"cross_model": dn - sn, "old_model": do - so}


def _significant(group: Mapping[str, Any], same: bool) -> bool:
    """The expectation inequality holds with the paired gap's 95 % interval excluding 0."""
    gap = group["gap_new_minus_old"]
    if gap.get("low") is None:
        return False
    return gap["high"] < 0 if same else gap["low"] > 0


def summarize_pairs(pairs: Sequence[Mapping[str, Any]], metric: str) -> dict:
    """Counts of pairs where each inequality holds in expectation, by kind of pair.

    Kinds: ``all``, ``consecutive`` (t = k + 1), ``across_replacement`` (a
    replacement at some r with k < r <= t) and ``within_segment`` (the rest).
    ``*_significant`` counts only pairs whose paired-gap interval excludes 0;
    ``*_frac_mean`` / ``*_frac_min`` summarise the per-pair fractions that
    Corollary 1 says cannot all reach 1.
    """
    kinds = {
        "all": list(pairs),
        "consecutive": [p for p in pairs if p["consecutive"]],
        "across_replacement": [p for p in pairs if p["replacements_between"]],
        "within_segment": [p for p in pairs if not p["replacements_between"]],
    }
    out = {}
    for name, ps in kinds.items():
        same = [p[metric]["same"] for p in ps]
        diff = [p[metric]["diff"] for p in ps]
        sf = [g["frac"] for g in same if g["frac"] is not None]
        df = [g["frac"] for g in diff if g["frac"] is not None]
        out[name] = {
            "pairs": len(ps),
            "same_holds": sum(bool(g["holds_in_expectation"]) for g in same),
            "diff_holds": sum(bool(g["holds_in_expectation"]) for g in diff),
            "both_hold": sum(
                bool(a["holds_in_expectation"] and b["holds_in_expectation"])
                for a, b in zip(same, diff, strict=True)
            ),
            "same_significant": sum(_significant(g, True) for g in same),
            "diff_significant": sum(_significant(g, False) for g in diff),
            "same_frac_mean": float(np.mean(sf)) if sf else None,
            "same_frac_min": float(np.min(sf)) if sf else None,
            "diff_frac_mean": float(np.mean(df)) if df else None,
            "diff_frac_min": float(np.min(df)) if df else None,
            "empirical_compatible": sum(bool(p.get("empirical", {}).get("compatible")) for p in ps),
            "cross_model_class_margin_mean": _mean(
                p.get("class_margin", {}).get(metric, {}).get("cross_model") for p in ps
            ),
            "old_model_class_margin_mean": _mean(
                p.get("class_margin", {}).get(metric, {}).get("old_model") for p in ps
            ),
        }
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
