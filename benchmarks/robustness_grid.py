"""How robust is the compatibility of HOC against ER? Class orders x image partitions x seeds.

    python benchmarks/robustness_grid.py command [--orders 8] [--order-seed 2024] --out DIR
    <run the printed compatkit sweep command>
    python benchmarks/robustness_grid.py report DIR [--variant NAME=DIR ...]

``command`` draws ``--orders - 1`` random permutations of the default config's local classes
(NumPy's default generator seeded with ``--order-seed``, so the grid is reproducible) plus the
default order, and prints the ``compatkit sweep`` command of the grid: HOC and ER at the
default settings over those orders x ``--partitions`` image partitions (``data_seed``) x the
seeds. The providers are shared per partition: the order of ``local.data.classes`` is the
task sequence only, never the images a class gets.

``report`` reads every setting's ``metrics.json`` from the sweep folder (nothing is
recomputed) and writes the ``robustness`` section of ``benchmarks/RESULTS.md`` and
``docs/img/robustness.png``: per (order, partition) cell, AC, AM and the final local accuracy
of HOC and ER (mean and spread over seeds); over the whole grid, the distribution of HOC's AC
and of the AM gap (HOC minus ER, per seed pair) with medians, ranges and bootstrap 95 %
intervals; and which model pairs miss the criterion, and how often, where AC is low. A
``--variant NAME=DIR`` is another sweep of the same grid with one change (e.g. a protocol
option): its HOC cells are set beside the default's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import DEFAULT_RESULTS, command_line, machine, md_table, render_section, write_section
from compatkit.config import load_config, resolve_config
from compatkit.report.style import new_figure, save

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "docs" / "img" / "robustness.png"
SECTION = "robustness"
BOOTSTRAP = 10_000  # resamples of the grid's cells for the intervals of medians and means


# ----------------------------------------------------------------------------- the grid


def draw_orders(classes: list[int], n: int, seed: int) -> list[list[int]]:
    """The default order first, then ``n - 1`` distinct random permutations of it."""
    rng = np.random.default_rng(seed)
    out, seen = [list(classes)], {tuple(classes)}
    while len(out) < n:
        p = [int(c) for c in rng.permutation(classes)]
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append(p)
    return out


def sweep_command(
    config: str, orders: list[list[int]], partitions: int, seeds: list[int], out: str, jobs: int
) -> str:
    vary_orders = ",".join("[" + ",".join(map(str, o)) + "]" for o in orders)
    words = [
        "compatkit", "sweep", config, "--set", f"seeds=[{','.join(map(str, seeds))}]",
        "--set", "methods=[hoc,er]",
        "--vary", f"local.data.classes={vary_orders}",
        "--vary", "data_seed=" + ",".join(str(p) for p in range(partitions)),
        "--out", out, "--jobs", str(jobs), "--keep-going",
    ]  # fmt: skip
    return shlex.join(words)


# ----------------------------------------------------------------------------- reading


def read_grid(sweep: Path) -> dict[tuple[str, tuple[int, ...], int], list[dict[str, Any]]]:
    """``{(method, order, data_seed): [per-seed run dicts]}`` of every setting with a result.

    A finished setting gives its ``metrics.json`` runs (matrices included). A setting some of
    whose seeds have no result (a training that diverged under ``sweep --keep-going``) gives
    the seeds that finished from their ``done.json`` (AC, AM, final local accuracy; no
    matrix), each marked ``partial``; :func:`missing_runs` names the others.
    """
    cells: dict[tuple[str, tuple[int, ...], int], list[dict[str, Any]]] = {}
    partial = []
    for folder in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
        cfg = load_config(folder / "config.yaml")
        metrics = folder / "metrics.json"
        if not metrics.is_file():
            partial.append((folder, cfg))
            continue
        m = json.loads(metrics.read_text())
        order = tuple(cfg.local.data.classes or m["_meta"]["class_order"])
        for method in m["_meta"]["methods"]:
            reps = [t for t in m["_meta"]["replacement_tasks"] if t > 0]
            runs = [dict(r, tasks=m["_meta"]["tasks"], reps=reps) for r in m[method]["runs"]]
            cells[(method, order, cfg.data_seed)] = runs
    for folder, cfg in partial:
        order = tuple(cfg.local.data.classes)
        for method in cfg.methods:
            done = sorted((folder / method).glob("seed_*/done.json"))
            runs = [dict(json.loads(d.read_text()), partial=True) for d in done]
            if runs:
                cells[(method, order, cfg.data_seed)] = runs
    return cells


def missing_runs(sweep: Path) -> list[str]:
    """The seeds without a result in settings where other seeds finished, each with the
    error its job recorded (``job.json``), for the report."""
    out = []
    for folder in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
        if (folder / "metrics.json").is_file():
            continue
        cfg = load_config(folder / "config.yaml")
        for method in cfg.methods:
            if not any((folder / method).glob("seed_*/done.json")):
                continue  # not started, or running: nothing to say yet
            for seed in cfg.seeds:
                d = folder / method / f"seed_{seed}"
                if (d / "done.json").is_file():
                    continue
                job = json.loads((d / "job.json").read_text()) if (d / "job.json").is_file() else {}
                why = job.get("failed") or "not finished"
                out.append(
                    f"{method.upper()}, classes {list(cfg.local.data.classes)}, data_seed "
                    f"{cfg.data_seed}, seed {seed}: {why}"
                )
    return out


def _stat(values: list[float]) -> str:
    a = np.asarray(values, float)
    if len(a) > 1:
        return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}"
    return f"{a.mean():.2f}"


def _boot(values: np.ndarray, fn, seed: int = 0) -> tuple[float, float]:
    """A bootstrap 95 % interval of ``fn`` over resamples of ``values``."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
    stats = fn(values[idx], axis=1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (as Spearman's coefficient takes them)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's of the tie-averaged ranks (nan if one is flat)."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def tradeoff(runs: list[dict[str, Any]], cell_ac: np.ndarray, cell_local: np.ndarray) -> str:
    """How HOC's AC goes with its final local accuracy over the grid (runs and cells)."""
    ac = np.asarray([r["AC"] for r in runs])
    loc = np.asarray([r["local_final"] for r in runs])
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(2000):
        i = rng.integers(0, len(ac), len(ac))
        boot.append(spearman(ac[i], loc[i]))
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    both = (ac >= 0.6) & (loc >= 50)
    return (
        f"- HOC's AC against its final local accuracy: Spearman {spearman(ac, loc):+.2f} over "
        f"{len(ac)} runs (95 % bootstrap interval {lo:+.2f} to {hi:+.2f}), "
        f"{spearman(cell_ac, cell_local):+.2f} over the {len(cell_ac)} cells' means; runs with "
        f"AC >= 0.6 and final local accuracy >= 50 %: {int(both.sum())} of {len(ac)}."
    )


def _order_text(order: tuple[int, ...], tasks: list[list[int]]) -> str:
    return " / ".join(",".join(map(str, t)) for t in tasks) if tasks else str(list(order))


# ----------------------------------------------------------------------------- the report


def report(sweep: Path, variants: dict[str, Path], figure: Path = FIGURE) -> str:
    cells = read_grid(sweep)
    keys = sorted({(o, p) for (_, o, p) in cells}, key=lambda k: (k[1], k[0] != _first(cells), k))
    both = [
        k
        for k in keys
        if ("hoc", *k) in cells
        and ("er", *k) in cells
        and not any(r.get("partial") for r in cells[("hoc", *k)])  # HOC's needs matrices
    ]
    var_cells = {name: read_grid(d) for name, d in variants.items()}
    rows = []
    hoc_ac_cells, gaps, hoc_ac_runs, hoc_local_cells, hoc_runs = [], [], [], [], []
    for order, part in both:
        hoc, er = cells[("hoc", order, part)], cells[("er", order, part)]
        by_seed = {r["seed"]: r for r in er}
        gap = [h["AM"] - by_seed[h["seed"]]["AM"] for h in hoc if h["seed"] in by_seed]
        gaps += gap
        hoc_ac_cells.append(float(np.mean([r["AC"] for r in hoc])))
        hoc_ac_runs += [r["AC"] for r in hoc]
        hoc_local_cells.append(float(np.mean([r["local_final"] for r in hoc])))
        hoc_runs += hoc
        row = [
            _order_text(order, hoc[0]["tasks"]), part,
            len(hoc) if len(er) == len(hoc) else f"{len(hoc)} (ER {len(er)})",
            _stat([r["AC"] for r in hoc]), _stat([r["AM"] for r in hoc]),
            _stat([r["local_final"] for r in hoc]),
            _stat([r["AC"] for r in er]), _stat([r["AM"] for r in er]),
            _stat([r["local_final"] for r in er]), _stat(gap),
            _stat([_first_replacement(r) for r in hoc]),
        ]  # fmt: skip
        for name in variants:
            v = var_cells[name].get(("hoc", order, part))
            row += (
                [_stat([r["AC"] for r in v]), _stat([r["AM"] for r in v]),
                 _stat([r["local_final"] for r in v])]
                if v else ["—", "—", "—"]
            )  # fmt: skip
        rows.append(row)
    header = ["tasks (classes)", "data_seed", "seeds", "HOC AC", "HOC AM", "HOC local",
              "ER AC", "ER AM", "ER local", "AM gap (pp)",
              "HOC C[2][1] - C[1][1] (pp)"]  # fmt: skip
    for name in variants:
        header += [f"{name} AC", f"{name} AM", f"{name} local"]
    if not rows:
        raise SystemExit(f"{sweep}: no cell has both HOC and ER finished yet")
    ac = np.asarray(hoc_ac_runs)
    gap_a = np.asarray(gaps)
    cell_ac = np.asarray(hoc_ac_cells)
    lo_ac, hi_ac = _boot(cell_ac, np.median)
    lo_gap, hi_gap = _boot(gap_a, np.median)
    planned = len(json.loads((sweep / "sweep.json").read_text()).get("settings", []))
    finished = len(list((sweep / "runs").glob("*/metrics.json")))
    missing = missing_runs(sweep)
    summary = [
        f"- finished: {finished} of the sweep's {planned} settings (method x order x "
        "partition)"
        + (
            "; the same sweep command, run again, goes on with the rest."
            if finished + len({m.split(", seed ")[0] for m in missing}) < planned
            else "; the rest have a seed without a result (below)."
            if missing
            else "."
        ),
        f"- cells with HOC and ER: {len(both)} (orders x partitions), "
        f"{len(ac)} HOC runs and {len(gap_a)} seed pairs.",
        f"- HOC's AC over all runs: median {np.median(ac):.2f}, range {ac.min():.2f} to "
        f"{ac.max():.2f}, mean {ac.mean():.2f}; per cell (mean over seeds): median "
        f"{np.median(cell_ac):.2f} (95 % bootstrap interval over cells {lo_ac:.2f} to "
        f"{hi_ac:.2f}), range {cell_ac.min():.2f} to {cell_ac.max():.2f}.",
        f"- AM gap, HOC minus ER on the same order, partition and seed: median "
        f"{np.median(gap_a):.1f} pp (95 % interval {lo_gap:.1f} to {hi_gap:.1f}), range "
        f"{gap_a.min():.1f} to {gap_a.max():.1f} pp; positive in {int((gap_a > 0).sum())} of "
        f"{len(gap_a)} pairs.",
        f"- ER's AC over all runs: max "
        f"{max(r['AC'] for k in both for r in cells[('er', *k)]):.2f}.",
        tradeoff(hoc_runs, cell_ac, np.asarray(hoc_local_cells)),
    ]
    summary += [f"- no result: {m}" for m in missing]
    for name in variants:
        v = [r for k in both for r in var_cells[name].get(("hoc", *k), [])]
        if v:
            a = np.asarray([r["AC"] for r in v])
            loc = np.asarray([r["local_final"] for r in v])
            summary.append(
                f"- {name}: HOC's AC median {np.median(a):.2f} (range {a.min():.2f} to "
                f"{a.max():.2f}) over {len(a)} runs; final local accuracy median "
                f"{np.median(loc):.1f} % (range {loc.min():.1f} to {loc.max():.1f})."
            )
    fails = _failing_pairs(cells, both)
    _plot(cells, both, var_cells, figure)
    parts = ["Commands:", "", "```bash", *_commands(sweep, variants), "```", ""]
    parts += [
        "`python benchmarks/robustness_grid.py command` prints the sweep with `--keep-going`, "
        "so that a job whose training diverges (below) does not stop the rest of the grid.",
        "",
    ]
    parts += [
        "Each cell: one class order of the six local classes (the tasks, in order, with the "
        "classes each teaches) and one image partition (`data_seed`), HOC and ER at the "
        "default settings, seeds 42, 43 and 44 (mean ± sample std). AC: fraction of the 10 "
        "model pairs j < i with C[i][j] > C[j][j]; AM: mean of the compatibility matrix (%); "
        "local: final local-class accuracy (%, chance 16.7); AM gap: HOC minus ER per seed "
        "pair; C[2][1] - C[1][1]: what the first replacement model (task 2) gains on model "
        "1's gallery over model 1's self-test. Single-machine numbers (2-core CPU, 1 torch "
        "thread per job): bitwise reproducible there, not across CPUs.",
        "",
        f"![AC and AM gap over the grid](../docs/img/{figure.name})",
        "",
        md_table(header, rows),
        "",
        "Over the grid:",
        "",
        *summary,
        "",
        "HOC's model pairs that miss the criterion (how many runs, of all HOC runs; models "
        "numbered from 1 by the task they finish; `*`: the model of a replacement task):",
        "",
        fails,
        "",
        "What the failing pairs have in common (HOC, every run of the grid; gap: C[i][j] - "
        "C[j][j], the query model on the older gallery minus the older model on its own; a "
        "pair fails when the gap is not positive):",
        "",
        why_tables(pair_records(cells, both)),
    ]
    return "\n".join(parts)


def _first_replacement(run: dict[str, Any]) -> float:
    """How much the model of the first replacement task gains (or loses) when it queries
    model 1's gallery instead of model 1 querying its own (zero-based C[1][0] - C[0][0])."""
    m = run["matrix"]
    return m[1][0] - m[0][0]


def _first(cells) -> tuple[int, ...]:
    return next(iter(sorted(cells, key=lambda k: k[2])))[1]


def _failing_pairs(cells, both) -> str:
    count: dict[tuple[int, int], int] = defaultdict(int)
    total = 0
    reps: list[int] = []
    for order, part in both:
        for r in cells[("hoc", order, part)]:
            total += 1
            reps = r["reps"]
            for v in r["violations"]:
                count[(v["row"], v["col"])] += 1

    def name(t: int) -> str:
        return f"{t + 1}{'*' if t in reps else ''}"

    rows = [
        [f"{name(i)} vs {name(j)}", f"{n} / {total}"]
        for (i, j), n in sorted(count.items(), key=lambda kv: -kv[1])
    ]
    return md_table(["query model vs gallery model", "runs missing"], rows)


FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot")  # fmt: skip
"""Fashion-MNIST's class names by label, for the tables a person reads."""


def _class_name(c: int) -> str:
    return f"{c} {FASHION_NAMES[c]}" if 0 <= c < len(FASHION_NAMES) else str(c)


def pair_records(cells, both, method: str = "hoc") -> list[dict[str, Any]]:
    """One record per (run, model pair j < i): the gap C[i][j] - C[j][j] (pp), whether the pair
    meets the criterion, the classes the two tasks teach, and how the pair sits against the
    replacement schedule (``reps``: zero-based tasks that start from a new provider)."""
    out = []
    for order, part in both:
        for r in cells[(method, order, part)]:
            m, tasks, reps = r["matrix"], r["tasks"], set(r["reps"])
            for i in range(1, len(m)):
                for j in range(i):
                    crosses = any(j < t <= i for t in reps)
                    out.append({
                        "order": order, "part": part, "seed": r["seed"], "i": i, "j": j,
                        "gap": m[i][j] - m[j][j], "ok": m[i][j] > m[j][j],
                        "query_class": tasks[i][-1], "gallery_class": tasks[j][-1],
                        "span": "across a replacement" if crosses else "within one provider",
                        "query_replaced": i in reps,
                    })  # fmt: skip
    return out


def why_tables(records: list[dict[str, Any]]) -> str:
    """Failure rate and mean gap of the pairs grouped by what the protocol makes of them: the
    replacement schedule, the class the query model's task taught (its last task's class, for
    the first task the second of its two), and the class the gallery model's task taught."""

    def table(key, label) -> str:
        groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for rec in records:
            groups[key(rec)].append(rec)
        rows = []
        for g, recs in sorted(
            groups.items(), key=lambda kv: -np.mean([not r["ok"] for r in kv[1]])
        ):
            gaps = np.asarray([r["gap"] for r in recs])
            fail = np.mean([not r["ok"] for r in recs])
            rows.append([g, len(recs), f"{100 * fail:.0f} %", f"{gaps.mean():+.1f}",
                         f"{np.percentile(gaps, 10):+.1f}"])  # fmt: skip
        return md_table([label, "pairs", "fail", "mean gap (pp)", "10th pct. gap (pp)"], rows)

    return "\n\n".join([
        table(lambda r: r["span"], "the pair"),
        table(lambda r: ("query model is a replacement" if r["query_replaced"]
                         else "query model fine-tuned") + f", {r['span']}", "the pair, finer"),
        table(lambda r: _class_name(r["query_class"]), "class taught by the query model's task"),
        table(lambda r: _class_name(r["gallery_class"]),
              "class taught by the gallery model's task"),
    ])  # fmt: skip


def _plot(cells, both, var_cells, path: Path) -> None:
    fig = new_figure(13.0, 3.8)
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2.2, 1, 1]})
    labels = [f"{i + 1}" for i in range(len(both))]
    x = np.arange(len(both))
    for off, method, colour in ((-0.15, "hoc", "#1f77b4"), (0.15, "er", "#d62728")):
        means = [np.mean([r["AC"] for r in cells[(method, *k)]]) for k in both]
        lo = [min(r["AC"] for r in cells[(method, *k)]) for k in both]
        hi = [max(r["AC"] for r in cells[(method, *k)]) for k in both]
        ax1.errorbar(
            x + off, means, yerr=np.clip([np.subtract(means, lo), np.subtract(hi, means)], 0, None),
            fmt="o", color=colour, label=method.upper(), capsize=2,
        )  # fmt: skip
    for name, vc in var_cells.items():
        pts = [(i, np.mean([r["AC"] for r in vc[("hoc", *k)]])) for i, k in enumerate(both)
               if ("hoc", *k) in vc]  # fmt: skip
        if pts:
            ax1.plot(*zip(*pts, strict=True), "s", color="#2ca02c", label=name, mfc="none")
    ax1.set_xticks(x, labels, fontsize=7)
    ax1.set_xlabel("grid cell (order, partition): table rows")
    ax1.set_ylabel("AC (mean over seeds; bars: min-max)")
    ax1.set_ylim(-0.05, 1.05)
    ax1.legend(fontsize=8)
    hoc_ac = [r["AC"] for k in both for r in cells[("hoc", *k)]]
    # AC moves in steps of 0.1 (10 pairs): one bar per value, centred on it
    ax2.hist(np.round(hoc_ac, 1), bins=np.arange(-0.05, 1.1, 0.1), color="#1f77b4",
             edgecolor="white")  # fmt: skip
    ax2.set_xlabel("HOC's AC per run")
    ax2.set_ylabel("runs")
    gaps = []
    for k in both:
        er = {r["seed"]: r["AM"] for r in cells[("er", *k)]}
        gaps += [r["AM"] - er[r["seed"]] for r in cells[("hoc", *k)] if r["seed"] in er]
    ax3.hist(gaps, bins=12, color="#7f7f7f", edgecolor="white")
    ax3.axvline(0, color="black", lw=0.8)
    ax3.set_xlabel("AM gap, HOC minus ER (pp, per seed pair)")
    ax3.set_ylabel("seed pairs")
    for ax in (ax2, ax3):
        ax.yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    save(fig, path)


def _commands(sweep: Path, variants: dict[str, Path]) -> list[str]:
    out = []
    for d in (sweep, *variants.values()):
        index = json.loads((d / "sweep.json").read_text())
        for inv in index["invocations"]:
            words = shlex.split(inv["command"])
            if "--out" in words:  # the folder as a user would name it, not this machine's
                words[words.index("--out") + 1] = f"runs/{d.name}"
            line = shlex.join(words)
            if line not in out:  # a resumed sweep records the same command again
                out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("command", help="print the sweep command of the grid")
    c.add_argument("--config", default="fashion")
    c.add_argument("--orders", type=int, default=8)
    c.add_argument("--order-seed", type=int, default=2024)
    c.add_argument("--partitions", type=int, default=2)
    c.add_argument("--seeds", default="42,43,44")
    c.add_argument("--jobs", type=int, default=2)
    c.add_argument("--out", default="runs/robustness")
    r = sub.add_parser("report", help="write the RESULTS.md section and the figure")
    r.add_argument("sweep", type=Path)
    r.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    r.add_argument("--results", type=Path, default=None, help="results file (default: RESULTS.md)")
    args = p.parse_args(argv)
    if args.cmd == "command":
        classes = load_config(resolve_config(args.config)).local.data.classes
        orders = draw_orders(list(classes), args.orders, args.order_seed)
        seeds = [int(s) for s in args.seeds.split(",")]
        print(sweep_command(args.config, orders, args.partitions, seeds, args.out, args.jobs))
        return 0
    variants = dict(v.split("=", 1) for v in args.variant)
    body = report(args.sweep, {k: Path(v) for k, v in variants.items()})
    text = render_section(
        SECTION, "How robust is compatibility? HOC and ER over class orders and partitions",
        command_line(__file__, argv if argv is not None else sys.argv[1:]), machine(), body,
    )  # fmt: skip
    path = write_section(args.results or DEFAULT_RESULTS, SECTION, text)
    print(body)
    print(f"\nwrote {path} and {FIGURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
