"""The summary of a sweep: one row per setting, the compatibility/plasticity front.

Compatibility (AM and AC of the compatibility matrix) is worth little alone: a model that does
not move is trivially compatible. The front puts it against plasticity, the final local-class
accuracy (how much the local learner learned). A setting is on the front (Pareto-optimal)
when no other setting of the sweep is at least as good on both axes and better on one; the
front is computed on the means over seeds, once with AM and once with AC.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..report import chance_levels, comparison_table, load_metrics
from ..report.style import legend_outside, new_figure, save
from ..report.table import METRIC_LABELS, fmt_stat
from ..runtime.files import atomic_write_json, atomic_write_text
from .grid import NOT_SHAPING

__all__ = ["STAT_KEYS", "collect", "pareto", "plot_front", "write_summary"]

REBUILD = (
    "delete it and run a sweep command with that setting again: it is rebuilt from the "
    "setting's finished jobs"
)
"""How to repair a setting's damaged metrics.json: it is derived from the jobs' records."""

STAT_KEYS = ("AC", "AM", "local_final", "local_mean", "local_gain", "BC", "FC", "final_self")
PLASTICITY = "local_final"
COMPATIBILITY = ("AM", "AC")


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which points are Pareto-optimal when both coordinates are to be maximised.

    A point is dominated when another is >= on both coordinates and > on one; equal points
    are all optimal (none dominates the other).
    """
    out = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (a >= x and b >= y) and (a > x or b > y) for j, (a, b) in enumerate(points) if j != i
        )
        out.append(not dominated)
    return out


def _lookup(config: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    cur: Any = config
    for part in key.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text


def varied_keys(index: Mapping[str, Any]) -> list[str]:
    """Every key varied by some invocation, in first-seen order."""
    keys: list[str] = []
    for entry in index["settings"].values():
        for k in entry.get("values", {}):
            if k not in keys:
                keys.append(k)
    return keys


def _flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """Dotted key -> YAML text of every leaf (lists are leaves) of a config mapping."""
    if not isinstance(config, Mapping):
        return {prefix: _show(config)}
    out: dict[str, str] = {}
    for k, v in config.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def distinguishing_keys(
    configs: Mapping[str, Mapping[str, Any]], methods: Mapping[str, str], known: Sequence[str]
) -> list[str]:
    """Keys, besides ``known``, on which two settings of one method differ.

    A later invocation may change a value with ``--set`` rather than ``--vary`` (another HOC
    form, say); without its own column two such settings would print as the same row.
    Keys that never shape results (``NOT_SHAPING``) are left out, and so are other methods'
    options.
    """
    flat = {h: _flatten(c) for h, c in configs.items()}
    extra: list[str] = []
    for method in sorted(set(methods.values())):
        group = [flat[h] for h in flat if methods[h] == method]
        # keys every config of the group holds (a config written by an older compatkit may
        # lack a newer key: that is no difference between settings)
        common = set.intersection(*(set(f) for f in group)) if group else set()
        for key in sorted(common):
            parts = key.split(".")
            if key in known or key in extra or parts[0] in NOT_SHAPING or parts[0] == "methods":
                continue
            if parts[0] == "method_options" and len(parts) > 1 and parts[1] != method:
                continue
            if len({f[key] for f in group}) > 1:
                extra.append(key)
    return extra


def _read_config(path: Path) -> dict[str, Any]:
    """A setting's config.yaml as a mapping; one line naming it when it is not one."""
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{path}: not a readable config ({' '.join(str(e).split())})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: not a config (a mapping)")
    return cfg


def collect(sweep_dir: Path, index: Mapping[str, Any]) -> tuple[list[dict], list[dict], list[str]]:
    """``(rows, pending, keys)``: a row per setting with a metrics.json, the others pending,
    and the keys that tell the rows apart (the varied ones, then any other key on which two
    settings of one method differ)."""
    keys = varied_keys(index)
    finished: dict[str, dict] = {}
    for h, entry in index["settings"].items():
        run_dir = sweep_dir / "runs" / entry["name"]
        if (run_dir / "metrics.json").is_file():
            finished[h] = _read_config(run_dir / "config.yaml")
    keys += distinguishing_keys(
        finished, {h: index["settings"][h]["method"] for h in finished}, keys
    )
    rows, pending = [], []
    for h, entry in index["settings"].items():
        run_dir = sweep_dir / "runs" / entry["name"]
        label = {"method": entry["method"], "setting": entry["name"], "hash": h}
        if not (run_dir / "metrics.json").is_file():
            pending.append({**label, "seeds": entry["seeds"]})
            continue
        try:
            metrics = load_metrics(run_dir)
        except InputError as e:
            raise InputError(f"{e}; {REBUILD}") from None
        cfg = finished[h]
        (row,) = comparison_table(metrics)
        values = {}
        for k in keys:
            parts = k.split(".")
            applies = not (parts[0] == "method_options" and len(parts) > 1)
            applies = applies or parts[1] == entry["method"]
            found, v = _lookup(cfg, k)
            values[k] = _show(v) if (found and applies) else None
        chance = chance_levels(metrics)
        meta = metrics.get("_meta") or {}
        rows.append(
            {
                **label,
                "values": values,
                "seeds": row["seed_ids"],
                "stats": {k: row["stats"].get(k) for k in STAT_KEYS},
                "violations": row["violations"],
                "chance_final": chance[-1] if chance else None,
                "seconds_per_seed": meta.get("seconds_per_seed"),
                "dir": os.path.relpath(run_dir, sweep_dir),
            }
        )
    for comp in COMPATIBILITY:
        ok = [
            r for r in rows if r["stats"][comp] is not None and r["stats"][PLASTICITY] is not None
        ]
        flags = pareto([(r["stats"][PLASTICITY]["mean"], r["stats"][comp]["mean"]) for r in ok])
        for r in rows:
            r.setdefault("front", {})[comp] = False
        for r, f in zip(ok, flags, strict=True):
            r["front"][comp] = f
    return rows, pending, keys


def _key_header(key: str) -> str:
    return key.removeprefix("method_options.")


def _front_mark(row: Mapping[str, Any]) -> str:
    return ", ".join(c for c in COMPATIBILITY if row["front"].get(c))


def _setting_text(row: Mapping[str, Any]) -> str:
    vals = [f"{k.split('.')[-1]}={v}" for k, v in row["values"].items() if v is not None]
    return f"{row['method']} " + " ".join(vals) if vals else row["method"]


def _seconds(row: Mapping[str, Any]) -> str:
    secs = [s for s in row.get("seconds_per_seed") or [] if s is not None]
    return f"{sum(secs) / len(secs):.0f}" if secs else "n/a"


def markdown_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    header = [
        "method",
        *(_key_header(k) for k in keys),
        "seeds",
        *(METRIC_LABELS[k] for k in STAT_KEYS),
        "front",
        "s / seed",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["method"],
            *("—" if r["values"][k] is None else str(r["values"][k]) for k in keys),
            str(len(r["seeds"])),
            *(fmt_stat(r["stats"][k]) for k in STAT_KEYS),
            _front_mark(r) or "",
            _seconds(r),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


HOW_TO_READ = """\
- One row per setting: a method under one configuration, over its seeds (mean ± sample std \
when there is more than one). A varied key that does not apply to a method (another method's \
option) shows —; such settings are run once, not once per value.
- **Compatibility**: AC (fraction of model pairs j < i with C[i][j] > C[j][j]) and AM (mean \
of the compatibility matrix, %), as in each run's report.
- **Plasticity**: the final model's local-class accuracy (%) on held-out test images of every \
local class, and its mean over the task models: how much the local learner learned. A model \
that does not move keeps compatibility trivially; chance is {chance}.
- **front**: the setting is Pareto-optimal for (final local acc., AM) and/or (final local \
acc., AC): no other setting of this sweep has at least as much of both and more of one \
(means over seeds).
- **s / seed**: wall time of one seed (training and evaluation of one method), in seconds, \
on the machine and load of the sweep."""


def plot_front(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Compatibility (AM, AC) against plasticity (final local acc.), one colour per method;
    the Pareto-optimal settings ringed, joined and labelled with their values."""
    from matplotlib import colormaps

    pts = [r for r in rows if r["stats"][PLASTICITY] is not None and r["stats"]["AM"]]
    if not pts:
        return None
    colors = colormaps["tab10"]
    methods = list(dict.fromkeys(r["method"] for r in pts))
    fig = new_figure(12.0, 5.0)
    for n, comp in enumerate(COMPATIBILITY):
        ax = fig.add_subplot(1, 2, n + 1)
        for k, m in enumerate(methods):
            mine = [r for r in pts if r["method"] == m and r["stats"][comp] is not None]
            xs = [r["stats"][PLASTICITY]["mean"] for r in mine]
            ys = [r["stats"][comp]["mean"] for r in mine]
            xe = [r["stats"][PLASTICITY]["std"] for r in mine]
            ye = [r["stats"][comp]["std"] for r in mine]
            ax.errorbar(
                xs, ys, xerr=xe, yerr=ye, fmt="o", ms=5, color=colors(k % 10), alpha=0.85,
                elinewidth=0.8, capsize=2, label=m,
            )  # fmt: skip
        front = sorted(
            (r for r in pts if r["front"][comp] and r["stats"][comp] is not None),
            key=lambda r: r["stats"][PLASTICITY]["mean"],
        )
        if front:
            fx = [r["stats"][PLASTICITY]["mean"] for r in front]
            fy = [r["stats"][comp]["mean"] for r in front]
            ax.plot(fx, fy, "-", color="0.3", lw=1.0, zorder=1, label="Pareto front")
            ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
            for r, x, y in zip(front, fx, fy, strict=True):
                ax.annotate(
                    _setting_text(r), (x, y), xytext=(4, 6), textcoords="offset points",
                    fontsize=6.5, color="0.15",
                )  # fmt: skip
        chance = next((r["chance_final"] for r in pts if r.get("chance_final")), None)
        if chance:
            ax.axvline(chance, ls=":", color="0.4", lw=1.2, label=f"chance ({chance:.1f} %)")
        ax.set_xlabel("plasticity: final local-class accuracy (%)")
        ax.set_ylabel(
            "compatibility: AM (%)" if comp == "AM" else "compatibility: AC (fraction of pairs)"
        )
        if comp == "AC":
            ax.set_ylim(-0.04, 1.04)  # a fraction of pairs: the whole range, always
        ax.set_title(f"{comp} against plasticity, per setting", fontsize=10)
        ax.grid(alpha=0.3)
        legend_outside(ax)
    fig.tight_layout()
    return save(fig, path)


def write_summary(sweep_dir: Path, index: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``summary.md``, ``summary.json``, ``summary.csv`` and ``front.png``."""
    rows, pending, keys = collect(sweep_dir, index)
    rows.sort(key=lambda r: (r["method"], [str(r["values"][k]) for k in keys]))
    front_png = plot_front(rows, sweep_dir / "front.png")
    commands = [inv["command"] for inv in index["invocations"]]
    chance = next((r["chance_final"] for r in rows if r.get("chance_final")), None)
    chance_text = f"{chance:.1f} % for the final model" if chance else "100 / (classes seen)"
    md = [f"# compatkit sweep: {sweep_dir.resolve().name}", ""]
    md += ["Produced by:", "", "```", *commands, "```", ""]
    md.append(
        f"{len(rows)} settings finished"
        + (f", {len(pending)} pending (run the command again to continue)" if pending else "")
        + "."
    )
    md.append("")
    if front_png is not None:
        md += ["![compatibility against plasticity](front.png)", ""]
    md += [markdown_table(rows, keys), ""]
    md += ["## How to read this", "", HOW_TO_READ.format(chance=chance_text), ""]
    if pending:
        md += ["## Pending", ""]
        md += [f"- {p['setting']} (seeds {p['seeds']})" for p in pending]
        md.append("")
    atomic_write_text(sweep_dir / "summary.md", "\n".join(md))
    payload = {"commands": commands, "varied": keys, "rows": rows, "pending": pending}
    atomic_write_json(sweep_dir / "summary.json", payload)
    atomic_write_text(sweep_dir / "summary.csv", _csv(rows, keys))
    return payload


def _csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    stat_cols = [f"{k}_{p}" for k in STAT_KEYS for p in ("mean", "std")]
    w.writerow(
        ["method", *keys, "seeds", *stat_cols, "front_AM", "front_AC", "seconds_per_seed", "dir"]
    )
    for r in rows:
        stats = []
        for k in STAT_KEYS:
            s = r["stats"][k]
            stats += ["", ""] if s is None else [f"{s['mean']:.4f}", f"{s['std']:.4f}"]
        secs = [s for s in r.get("seconds_per_seed") or [] if s is not None]
        w.writerow(
            [
                r["method"],
                *("" if r["values"][k] is None else r["values"][k] for k in keys),
                " ".join(str(s) for s in r["seeds"]),
                *stats,
                int(r["front"]["AM"]),
                int(r["front"]["AC"]),
                f"{sum(secs) / len(secs):.1f}" if secs else "",
                r["dir"],
            ]
        )
    return buf.getvalue()
