"""Tests of compatkit.report: statistics against hand computation, markdown, PNG files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from compatkit import report
from compatkit.errors import InputError

from .plot_checks import assert_legends_outside, gold_pixels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# T = 4, zero-based cell (2, 1) breaks the criterion: C[2][1] = 54 < C[1][1] = 55.
HOC_42 = [[50.0], [51.0, 55.0], [56.0, 54.0, 60.0], [57.0, 58.0, 61.0, 62.0]]
# Seed 43: the same model sequence one point better, and without the violation.
HOC_43 = [[51.0], [52.0, 56.0], [57.0, 57.0, 61.0], [58.0, 59.0, 62.0, 63.0]]
# A learnable-head baseline that collapses on every cross-test.
ER_42 = [[40.0], [10.0, 42.0], [11.0, 12.0, 45.0], [9.0, 10.0, 13.0, 47.0]]
ER_43 = [[42.0], [12.0, 44.0], [13.0, 14.0, 47.0], [11.0, 12.0, 15.0, 49.0]]
# Local-class accuracy (%) of each task model: the plasticity beside each matrix above.
LOCAL = {
    ("hoc", 42): [80.0, 60.0, 50.0, 45.0],
    ("hoc", 43): [84.0, 62.0, 52.0, 47.0],
    ("er", 42): [90.0, 55.0, 40.0, 30.0],
    ("er", 43): [88.0, 57.0, 42.0, 32.0],
}
# ... and of the model each task started from (fixed head only: er's start is not defined)
START = {("hoc", 42): [50.0, 40.0, 30.0, 35.0], ("hoc", 43): [50.0, 41.0, 32.0, 36.0]}
TASKS = [[1, 3], [4], [5], [6]]  # chance on the classes seen so far: 50, 33.3, 25, 20 %


def slow_metrics(c: list[list[float]]) -> dict:
    """The paper's definitions, written as plain loops (independent of report.py)."""
    t = len(c)
    pairs = [(i, j) for i in range(t) for j in range(i)]
    lower = [c[i][j] for i in range(t) for j in range(i + 1)]
    bad = [(i, j) for i, j in pairs if not c[i][j] > c[j][j]]
    aa = []
    for k in range(1, t + 1):
        block = [c[i][j] for i in range(k) for j in range(i + 1)]
        aa.append(sum(block) / len(block))
    return {
        "matrix": c,
        "AC": (len(pairs) - len(bad)) / len(pairs) if pairs else None,
        "AM": sum(lower) / len(lower),
        "AA": aa,
        "BC": sum(c[t - 1][i] - c[i][i] for i in range(t - 1)) / (t - 1) if t > 1 else None,
        "FC": sum(c[i][i - 1] - c[i][i] for i in range(1, t)) / (t - 1) if t > 1 else None,
        "final_self": c[t - 1][t - 1],
        "bad": bad,
    }


def make_run(
    c: list[list[float]],
    seed: int,
    one_based: bool = False,
    local: list | None = None,
    start: list | None = None,
) -> dict:
    m = slow_metrics(c)
    if local is not None:
        m["local_accuracy"] = local
        m["local_final"] = local[-1]
        m["local_mean"] = sum(local) / len(local)
    if start is not None:
        m["local_start"] = start
        m["local_gain"] = sum(a - b for a, b in zip(local, start, strict=True)) / len(local)
    base = 1 if one_based else 0
    m["violations"] = [
        {"row": i + base, "col": j + base, "value": c[i][j], "self": c[j][j]} for i, j in m["bad"]
    ]
    del m["bad"]
    m["recall1_matrix"] = c
    m["map_matrix"] = c
    return {"seed": seed, **m}


def make_method(
    matrices: list[list[list[float]]], seeds: list[int], one_based=False, name: str = ""
) -> dict:
    runs = [
        make_run(c, s, one_based, LOCAL.get((name, s)), START.get((name, s)))
        for c, s in zip(matrices, seeds, strict=True)
    ]
    summary = {}
    for key in ("AC", "AM", "BC", "FC", "final_self"):
        vals = [r[key] for r in runs]
        if any(v is None for v in vals):
            summary[key] = {"mean": None, "std": None, "values": vals}
            continue
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        summary[key] = {"mean": float(np.mean(vals)), "std": std, "values": vals}
    return {**runs[0], "seeds": seeds, "runs": runs, "summary": summary}


def make_metrics() -> dict:
    return {
        # hoc records its violation one-based (as the paper writes C[5][4]), er zero-based.
        "hoc": make_method([HOC_42, HOC_43], [42, 43], one_based=True, name="hoc"),
        "er": make_method([ER_42, ER_43], [42, 43], name="er"),
        "_meta": {
            "seeds": [42, 43],
            "num_tasks": 4,
            "replacement_tasks": [0, 2],
            "methods": ["hoc", "er"],
            "tasks": TASKS,
            "dataset": "fashion-mnist",
            "compatkit_version": "0.1.0",
            "wall_time_s": 123.4,
            "no_replacement": False,
            "some_future_key": {"ignored": True},
        },
    }


def make_t1_metrics() -> dict:
    return {
        "hoc": make_method([[[70.0]]], [7]),
        "_meta": {"seeds": [7], "num_tasks": 1, "replacement_tasks": [0], "methods": ["hoc"]},
    }


def write_run(tmp_path: Path, metrics: dict, name: str = "run") -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return run_dir


def assert_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 1000, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 200 and img.shape[1] > 200
    return img


def dark_red_pixels(img: np.ndarray) -> int:
    """Pixels of the violation outline and hatching (#c00000), up to antialiasing."""
    target = np.array([0xC0, 0x00, 0x00]) / 255.0
    return int((np.abs(img[..., :3] - target).max(axis=-1) < 0.06).sum())


def keep_figures(monkeypatch, *modules) -> list:
    """Make ``save`` of the plot modules keep each figure (and write nothing)."""
    figs: list = []

    def keep(fig, path):
        figs.append(fig)
        return Path(path)

    for mod in modules:
        monkeypatch.setattr(mod, "save", keep)
    return figs


# --------------------------------------------------------------------------- hand values


def test_hand_values_of_the_fixture() -> None:
    """Pin the fixture itself, so the later comparisons rest on known numbers."""
    m = slow_metrics(HOC_42)
    assert m["bad"] == [(2, 1)]
    assert m["AC"] == pytest.approx(5 / 6)
    assert m["AM"] == pytest.approx(56.4)
    assert m["BC"] == pytest.approx((7 + 3 + 1) / 3)
    assert m["FC"] == pytest.approx((-4 - 6 - 1) / 3)
    assert slow_metrics(HOC_43)["bad"] == []
    assert len(slow_metrics(ER_42)["bad"]) == 6


def test_aa_curve_matches_loop() -> None:
    rng = np.random.default_rng(0)
    c = [list(rng.uniform(0, 100, i + 1)) for i in range(9)]
    assert report.aa_curve(c) == pytest.approx(slow_metrics(c)["AA"])


def test_matrix_violations_is_strict() -> None:
    # A tie is a violation: the criterion asks for strictly better.
    assert report.matrix_violations([[50.0], [50.0, 60.0]]) == [(1, 0)]
    assert report.matrix_violations([[50.0], [50.01, 60.0]]) == []
    assert report.matrix_violations(ER_42) == slow_metrics(ER_42)["bad"]


# --------------------------------------------------------------------------- violations


def test_resolve_violations_zero_and_one_based() -> None:
    zero = [{"row": 2, "col": 1, "value": 54.0, "self": 55.0}]
    one = [{"row": 3, "col": 2, "value": 54.0, "self": 55.0}]
    assert report.resolve_violations(HOC_42, zero) == {(2, 1)}
    assert report.resolve_violations(HOC_42, one) == {(2, 1)}
    assert report.resolve_violations(HOC_42, [(2, 1)]) == {(2, 1)}
    assert report.resolve_violations(HOC_42, None) == {(2, 1)}
    assert report.resolve_violations(HOC_43, []) == set()


def test_resolve_violations_paper_example() -> None:
    """The paper's one violation, C[5][4] = 72.11 < C[4][4] = 72.37, stored one-based."""
    paper = [
        [58.89],
        [59.70, 61.56],
        [63.05, 65.28, 69.31],
        [63.34, 65.30, 70.63, 72.37],
        [65.01, 67.87, 70.75, 72.11, 73.83],
        [64.08, 67.19, 71.17, 72.71, 74.70, 76.19],
        [63.14, 66.35, 72.10, 73.50, 75.23, 76.65, 77.16],
    ]
    rec = [{"row": 5, "col": 4, "value": 72.11, "self": 72.37}]
    assert report.resolve_violations(paper, rec) == {(4, 3)}
    assert report.resolve_violations(paper, None) == {(4, 3)}


def test_resolve_violations_rejects_a_mismatch() -> None:
    with pytest.raises(ValueError, match="do not match"):
        report.resolve_violations(HOC_42, [{"row": 3, "col": 0, "value": 57.0}])
    with pytest.raises(ValueError, match="do not match"):
        report.resolve_violations(HOC_42, [{"row": 2, "col": 1, "value": 12.0}])


def test_lower_triangle_validation() -> None:
    c = report.lower_triangle(HOC_42)
    assert c.shape == (4, 4)
    assert np.isnan(c[0, 1]) and c[3, 2] == 61.0
    square = [[1.0, None], [2.0, 3.0]]  # a full square with a null upper part is accepted
    assert report.lower_triangle(square)[1, 0] == 2.0
    with pytest.raises(ValueError, match="row 1 has 3 entries"):
        report.lower_triangle([[1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2, 3, 4]])
    with pytest.raises(ValueError, match=r"\[1\]\[0\]"):
        report.lower_triangle([[1.0], [None, 2.0]])
    with pytest.raises(ValueError, match="empty"):
        report.lower_triangle([])


# --------------------------------------------------------------------------- table


def test_comparison_table_against_hand_computation() -> None:
    rows = {r["method"]: r for r in report.comparison_table(make_metrics())}
    assert list(rows) == ["hoc", "er"]
    hoc = rows["hoc"]["stats"]
    # AC over seeds: 5/6 and 1; sample std of two values is |a - b| / sqrt(2).
    assert hoc["AC"]["mean"] == pytest.approx((5 / 6 + 1) / 2)
    assert hoc["AC"]["std"] == pytest.approx((1 / 6) / math.sqrt(2))
    am43 = sum(sum(r) for r in HOC_43) / 10
    assert hoc["AM"]["mean"] == pytest.approx((56.4 + am43) / 2)
    assert hoc["AM"]["std"] == pytest.approx(abs(56.4 - am43) / math.sqrt(2))
    assert hoc["final_self"]["mean"] == pytest.approx(62.5)
    bc43 = ((58 - 51) + (59 - 56) + (62 - 61)) / 3
    assert hoc["BC"]["mean"] == pytest.approx((11 / 3 + bc43) / 2)
    assert rows["hoc"]["AC"] == f"{11 / 12:.2f} ± {(1 / 6) / math.sqrt(2):.2f}"
    assert rows["hoc"]["final_self"] == "62.50 ± 0.71"
    assert rows["hoc"]["violation_counts"] == [1, 0]
    assert rows["hoc"]["violations"] == "0.5 ± 0.7 / 6"
    er = rows["er"]
    assert er["stats"]["AC"]["mean"] == 0.0 and er["stats"]["AC"]["std"] == 0.0
    assert er["violations"] == "6 / 6"
    assert er["seeds"] == 2


def test_comparison_table_plasticity_against_hand_computation() -> None:
    rows = {r["method"]: r for r in report.comparison_table(make_metrics())}
    hoc, er = rows["hoc"]["stats"], rows["er"]["stats"]
    assert hoc["local_final"]["values"] == [45.0, 47.0]
    assert hoc["local_final"]["std"] == pytest.approx(2 / math.sqrt(2))
    # gain over the task's starting model: (30 + 20 + 20 + 10) / 4 and (34 + 21 + 20 + 11) / 4
    assert hoc["local_gain"]["values"] == pytest.approx([20.0, 21.5])
    assert er["local_gain"] is None and rows["er"]["local_gain"] == "n/a"
    assert hoc["local_mean"]["mean"] == pytest.approx((58.75 + 61.25) / 2)
    assert er["local_mean"]["values"] == pytest.approx([53.75, 54.75])
    assert rows["er"]["local_final"] == f"31.00 ± {math.sqrt(2):.2f}"
    # Runs written before local_mean existed: the mean comes from the per-task list.
    m = make_metrics()
    for r in m["hoc"]["runs"]:
        del r["local_mean"], r["local_final"], r["local_gain"]
    (hoc_row, _) = report.comparison_table(m)
    assert hoc_row["stats"]["local_mean"]["values"] == pytest.approx([58.75, 61.25])
    assert hoc_row["stats"]["local_final"]["values"] == [45.0, 47.0]
    assert hoc_row["stats"]["local_gain"]["values"] == pytest.approx([20.0, 21.5])
    start, _, _ = report.method_local(m["hoc"], "local_start")
    assert start == pytest.approx([50.0, 40.5, 31.0, 35.5])
    assert report.method_local(m["er"], "local_start") is None
    mean, std, n = report.method_local(m["er"])
    assert mean == pytest.approx([89.0, 56.0, 41.0, 31.0]) and n == 2
    assert std == pytest.approx([math.sqrt(2)] * 4)
    assert report.chance_levels(m) == pytest.approx([50.0, 100 / 3, 25.0, 20.0])


def test_plasticity_plot_draws_chance_and_the_task_start(tmp_path: Path, monkeypatch) -> None:
    from compatkit.report import plots

    figs = keep_figures(monkeypatch, plots)
    aa = {"hoc": [50.0, 52.0, 55.0, 56.0], "er": [40.0, 30, 20, 18]}
    local = {"hoc": [80.0, 60.0, 50.0, 45.0], "er": [90.0, 55.0, 40.0, 30.0]}
    starts = {"hoc": ([50.0, 40.0, 30.0, 35.0], None)}
    report.plot_plasticity(aa, local, [0, 2], tmp_path / "p.png", aa_chance=25.0, starts=starts)
    report.plot_aa(aa, [0, 2], tmp_path / "aa.png", chance=25.0)
    (fig, fig_aa) = figs
    left, right = fig.axes
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in right.lines}
    assert lines["hoc: at the task's start"] == [50.0, 40.0, 30.0, 35.0]
    assert "er: at the task's start" not in lines  # a learnable head has no defined start
    for ax in (left, fig_aa.axes[0]):
        (chance,) = [ln for ln in ax.lines if ln.get_label() == report.plots.AA_CHANCE_LABEL]
        assert list(chance.get_ydata()) == [25.0, 25.0]


def test_gallery_chance() -> None:
    assert report.gallery_chance({"gallery_classes": 4}) == 25.0
    assert (
        report.gallery_chance({}) is None and report.gallery_chance({"gallery_classes": 0}) is None
    )


def test_plasticity_plot_holds_the_given_curves(tmp_path: Path, monkeypatch) -> None:
    from compatkit.report import plots

    figs = []
    real_save = plots.save

    def keep(fig, path):
        figs.append(fig)
        p = Path(path)
        fig.savefig(p, dpi=50)  # the real save clears the figure
        return p

    monkeypatch.setattr(plots, "save", keep)
    aa = {"hoc": ([50.0, 52.0, 55.0, 56.0], [0.5, 0.7, 0.2, 0.3])}
    local = {"hoc": ([80.0, 60.0, 50.0, 45.0], None)}
    report.plot_plasticity(aa, local, [0, 2], tmp_path / "p.png", chance=[50, 100 / 3, 25, 20])
    (fig,) = figs
    left, right = fig.axes
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in right.lines}
    assert lines["hoc"] == [80.0, 60.0, 50.0, 45.0]
    assert lines["chance (1 / classes seen)"] == pytest.approx([50, 100 / 3, 25, 20])
    assert [ln.get_ydata().tolist() for ln in left.lines if ln.get_label() == "hoc"] == [
        [50.0, 52.0, 55.0, 56.0]
    ]
    monkeypatch.setattr(plots, "save", real_save)
    report.plot_plasticity(aa, local, [0, 2], tmp_path / "p.png")
    assert_png(tmp_path / "p.png")


def test_comparison_table_without_runs_uses_summary_then_top_level() -> None:
    m = make_metrics()
    del m["hoc"]["runs"]
    m["hoc"]["summary"]["AM"] = {"mean": 61.0, "std": 2.5, "values": [58.5, 63.5]}
    del m["hoc"]["summary"]["final_self"]
    rows = {r["method"]: r for r in report.comparison_table(m)}
    assert rows["hoc"]["AM"] == "61.00 ± 2.50"
    assert rows["hoc"]["final_self"] == "62.00"  # top level = the first seed's run


def test_comparison_table_single_task() -> None:
    (row,) = report.comparison_table(make_t1_metrics())
    assert row["BC"] == "n/a" and row["FC"] == "n/a" and row["AC"] == "n/a"
    assert row["AM"] == "70.00" and row["violations"] == "0 / 0"
    assert row["stats"]["AM"]["std"] == 0.0


# --------------------------------------------------------------------------- validation


def test_validate_metrics_messages() -> None:
    with pytest.raises(ValueError, match="no method results"):
        report.validate_metrics({"_meta": {}})
    with pytest.raises(ValueError, match="JSON object"):
        report.validate_metrics([1, 2])
    bad = make_metrics()
    bad["er"]["runs"][1]["AM"] = "high"
    with pytest.raises(ValueError, match=r"er run 1: AM"):
        report.validate_metrics(bad)
    bad = make_metrics()
    bad["_meta"]["replacement_tasks"] = [0, 4]
    with pytest.raises(ValueError, match="replacement task 4"):
        report.validate_metrics(bad)
    bad = make_metrics()
    bad["er"]["runs"][0]["AA"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="AA must list 4"):
        report.validate_metrics(bad)


def test_load_metrics_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run directory not found"):
        report.load_metrics(tmp_path / "nope")
    with pytest.raises(InputError, match=r"no metrics\.json"):
        report.load_metrics(tmp_path)
    with pytest.raises(InputError, match=r"no other\.json"):
        report.load_metrics(tmp_path / "other.json")
    (tmp_path / "metrics.json").write_text("{truncated", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        report.load_metrics(tmp_path)
    with pytest.raises(ValueError, match="not valid JSON"):
        report.load_metrics(tmp_path / "metrics.json")


# --------------------------------------------------------------------------- markdown


def test_render_markdown_contents(tmp_path: Path) -> None:
    text = report.render_markdown(make_metrics(), tmp_path / "run", [("Theory", "body text")])
    assert "# compatkit run report: run" in text
    assert "- Dataset: fashion-mnist" in text
    assert "- Seeds: 42, 43" in text
    # _meta lists [0, 2] (task 0 starts from a provider): one replacement, at task 3 of 1..T
    assert (
        "- Replacements: the model is replaced by a new provider at task 3 "
        "(config `replacement_tasks: [2]`, zero-based)" in text
    )
    assert "- Wall time: 2 min 03 s" in text
    rows = {r["method"]: r for r in report.comparison_table(make_metrics())}
    assert report.table_columns(list(rows.values())) == report.TABLE_COLUMNS
    for m in ("hoc", "er"):
        r = rows[m]
        line = "| " + " | ".join(str(r[k]) for k in report.TABLE_COLUMNS) + " |"
        assert line in text
    # The violation is marked in the hoc matrix table and listed one-based.
    assert "| **3\\*** | 56.00 | **54.00 ⚠** | 60.00 |  |" in text
    assert "C[3][2] = 54.00 ≤ C[2][2] = 55.00" in text
    # er: all six cross-tests marked in its matrix.
    er_part = text.split("## Method: er")[1]
    assert er_part.count("⚠**") == 6
    assert "AC** (average compatibility)" in text and "strict" in text
    assert text.rstrip().endswith("body text")
    assert "## Theory" in text
    # No plots exist under that directory, so no broken image links.
    assert "](plots/" not in text
    # Per-task table: AA_t and local accuracy, mean ± std over the two seeds, replacement
    # tasks marked, chance on the classes seen so far in the last column.
    sd = 1 / math.sqrt(2)  # sample std of two values one point apart
    assert (
        f"| **1\\*** | 50.50 ± {sd:.2f} | 82.00 ± {4 * sd:.2f} | 50.00 ± 0.00 "
        f"| 41.00 ± {2 * sd:.2f} | 89.00 ± {2 * sd:.2f} | 50.0 |" in text
    )
    assert "| hoc: at the task's start |" in text and "er: at the task's start" not in text
    assert "| 4 | " in text and text.count("| 20.0 |") == 1
    assert "chance: 20.0 % for the final model" in text


def test_render_markdown_single_task(tmp_path: Path) -> None:
    text = report.render_markdown(make_t1_metrics(), tmp_path)
    # A run without local accuracy keeps the compatibility columns only.
    assert "| hoc | n/a | 70.00 | n/a | n/a | 70.00 | 0 / 0 |" in text
    assert "final local acc. (%)" not in text and "## AA_t per task" in text
    assert "⚠" not in text.split("## Method: hoc")[1]


# --------------------------------------------------------------------------- plots


def test_plot_matrix_marks_violations(tmp_path: Path) -> None:
    report.plot_matrix(HOC_42, None, "hoc", tmp_path / "hoc.png", replacement_tasks=[0, 2])
    report.plot_matrix(ER_42, None, "er", tmp_path / "er.png", replacement_tasks=[0, 2])
    report.plot_matrix(HOC_43, [], "clean", tmp_path / "clean.png", replacement_tasks=[0, 2])
    hoc = dark_red_pixels(assert_png(tmp_path / "hoc.png"))
    er = dark_red_pixels(assert_png(tmp_path / "er.png"))
    clean = dark_red_pixels(assert_png(tmp_path / "clean.png"))
    # One violating cell adds an outline and hatching over the legend's swatch; six add more.
    assert hoc > clean + 100
    assert er > hoc + 3 * (hoc - clean)


def test_matrix_colours_are_gaps_on_a_scale_centred_at_zero() -> None:
    fig = report.matrix_figure(HOC_42, None, "hoc", [0, 2])
    (im,) = fig.axes[0].images
    # HOC_42's largest |C[i][j] - C[j][j]| is C[3][0] - C[0][0] = 57 - 50 = 7 pp
    assert (im.norm.vmin, im.norm.vmax) == (-7.0, 7.0)
    gaps = im.get_array()
    assert gaps[2, 1] == -1.0 and gaps[3, 0] == 7.0 and gaps[1, 1] == 0.0
    assert bool(gaps.mask[0, 1])  # the upper triangle is blank
    red, blue, white = (im.cmap(im.norm(v)) for v in (-1.0, 7.0, 0.0))
    assert red[0] > red[2] and blue[2] > blue[0]  # a violation is red, a compatible pair blue
    assert min(white[:3]) > 0.9  # the diagonal (gap 0) is white
    fig2 = report.matrix_figure(HOC_42, None, "hoc", [0, 2], limit=20.0)
    assert fig2.axes[0].images[0].norm.vmax == 20.0
    assert report.gap_limit([HOC_42, ER_42]) == 32.0  # ER_42: C[1][0] - C[0][0] = -30 ... -32


def test_report_figures_share_one_colour_scale(tmp_path: Path, monkeypatch) -> None:
    from compatkit.report import matrix_plots, plots

    figs = keep_figures(monkeypatch, matrix_plots, plots)
    report.write_report(write_run(tmp_path, make_metrics()))
    norms = {(im.norm.vmin, im.norm.vmax) for f in figs for ax in f.axes for im in ax.images}
    assert norms == {(-32.0, 32.0)}  # hoc and er, alone and side by side: one scale
    assert sum(len(ax.images) for f in figs for ax in f.axes) == 4


def test_plot_large_matrix_and_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    big = [list(50 + i + rng.uniform(-2, 2, i + 1)) for i in range(31)]
    report.plot_matrix(big, None, "T = 31", tmp_path / "big.png", replacement_tasks=[0, 10, 20])
    img = assert_png(tmp_path / "big.png")
    assert max(img.shape[:2]) < 1400  # capped figure size, not one inch per cell
    report.plot_matrices_grid(
        {"hoc": {"matrix": HOC_42, "violations": None}, "er": (ER_42, None), "bare": HOC_43},
        tmp_path / "grid.png",
        [0, 2],
    )
    grid = assert_png(tmp_path / "grid.png")
    assert grid.shape[1] > grid.shape[0]  # side by side
    with pytest.raises(ValueError):
        report.plot_matrices_grid({}, tmp_path / "none.png")


def test_plot_aa_with_spread_and_second_panel(tmp_path: Path) -> None:
    curves = {"hoc": ([50.0, 52.0, 55.0, 56.0], [0.5, 0.7, 0.2, 0.3]), "er": [40.0, 30, 20, 18]}
    report.plot_aa(curves, [0, 2], tmp_path / "aa.png")
    one = assert_png(tmp_path / "aa.png")
    report.plot_aa(curves, [0, 2], tmp_path / "aa2.png", no_replacement=curves)
    two = assert_png(tmp_path / "aa2.png")
    assert two.shape[1] > 1.6 * one.shape[1]


# --------------------------------------------------------------------------- write_report


def test_write_report_end_to_end(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, make_metrics())
    (run_dir / "analysis.json").write_text(
        json.dumps({"title": "Drift analysis", "markdown": "Feature drift was small."}),
        encoding="utf-8",
    )
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "aa.png").write_bytes(b"stale")  # from a report of an older version
    path = report.write_report(run_dir)
    assert path == run_dir / "report.md"
    names = ("matrix_hoc.png", "matrix_er.png", "matrices.png", "plasticity.png")
    for name in names:
        assert_png(run_dir / "plots" / name)
    text = path.read_text(encoding="utf-8")
    for name in names:
        assert text.count(f"](plots/{name})") == 1
    # AA_t is the left panel of plasticity.png: no second copy of it.
    assert not (run_dir / "plots" / "aa.png").exists() and "aa.png" not in text
    assert "## Drift analysis" in text and "Feature drift was small." in text
    assert not list(run_dir.glob(".*.tmp"))


def test_write_report_single_task_and_analysis_without_markdown(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, make_t1_metrics())
    (run_dir / "analysis.json").write_text(json.dumps({"drift": [0.1]}), encoding="utf-8")
    text = report.write_report(run_dir).read_text(encoding="utf-8")
    assert "n/a" in text and "drift" not in text
    assert_png(run_dir / "plots" / "matrix_hoc.png")
    assert_png(run_dir / "plots" / "aa.png")


def test_write_report_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run directory not found"):
        report.write_report(tmp_path / "missing")
    with pytest.raises(InputError, match=r"metrics\.json"):
        report.write_report(tmp_path)
    bad = make_metrics()
    bad["hoc"]["runs"][0]["matrix"] = [[1.0], [2.0]]
    run_dir = write_run(tmp_path, bad)
    with pytest.raises(ValueError, match="hoc run 0 matrix: row 1"):
        report.write_report(run_dir)
    assert not (run_dir / "report.md").exists()


def test_report_reads_what_the_metrics_module_writes(tmp_path: Path) -> None:
    """Guard the file format between compatkit.metrics (the writer) and this reader."""
    from compatkit.metrics import compatibility_report

    runs = []
    for seed, c in ((42, HOC_42), (43, HOC_43)):
        d = compatibility_report(report.lower_triangle(c)).to_dict()  # wants a square array
        runs.append({"seed": seed, "matrix": c, "final_self": c[-1][-1], **d})
    m = {
        "hoc": {**runs[0], "seeds": [42, 43], "runs": runs},
        "_meta": {
            "seeds": [42, 43],
            "num_tasks": 4,
            "replacement_tasks": [0, 2],
            "device": "cpu",
            "precision": "fp32",
            "query_images": 12000,
            "gallery_images": 10,
            "eval_seconds": 3.5,
        },
    }
    assert runs[0]["violations"]  # the writer records the (2, 1) violation
    assert report.resolve_violations(HOC_42, runs[0]["violations"]) == {(2, 1)}
    (row,) = report.comparison_table(m)
    assert row["stats"]["AC"]["mean"] == pytest.approx(11 / 12)
    assert row["stats"]["BC"]["values"] == pytest.approx([runs[0]["BC"], runs[1]["BC"]])
    text = report.render_markdown(m, tmp_path)
    assert "- Evaluation: 12,000 query images, 10 gallery images" in text
    assert "- Device: cpu (fp32)" in text
    assert "**54.00 ⚠**" in text


# --------------------------------------------------------------------------- plot hygiene


def test_replacement_boundaries_stay_visible_over_violation_boxes(tmp_path: Path) -> None:
    """Every cross-test of ER_42 is a violation, so its boundaries run along violation boxes;
    they must show as much as on a matrix without any violation."""
    report.plot_matrix(ER_42, None, "er", tmp_path / "er.png", replacement_tasks=[0, 2])
    report.plot_matrix(HOC_43, [], "clean", tmp_path / "clean.png", replacement_tasks=[0, 2])
    er = gold_pixels(assert_png(tmp_path / "er.png"))
    clean = gold_pixels(assert_png(tmp_path / "clean.png"))
    assert clean > 300  # the dashed boundary and its key are there at all
    assert er > 0.85 * clean


def test_no_legend_covers_a_curve_or_a_cell(tmp_path: Path, monkeypatch) -> None:
    from compatkit.report import matrix_plots, plots

    figs = keep_figures(monkeypatch, matrix_plots, plots)
    curves = {"hoc": ([50.0, 52.0, 55.0, 56.0], [0.5, 0.7, 0.2, 0.3]), "er": [40.0, 30, 20, 18]}
    report.plot_aa(curves, [0, 2], tmp_path / "aa.png")
    report.plot_aa(curves, [0, 2], tmp_path / "aa2.png", no_replacement=curves)
    report.plot_plasticity(curves, curves, [0, 2], tmp_path / "p.png", chance=[50, 33, 25, 20])
    report.plot_matrix(HOC_42, None, "hoc", tmp_path / "m.png", replacement_tasks=[0, 2])
    report.plot_matrices_grid(
        {f"m{k}": HOC_42 for k in range(5)}, tmp_path / "grid.png", [0, 2]
    )  # two rows of panels: a key under the first would cover the second row
    assert sum(assert_legends_outside(f) for f in figs) >= 7


# --------------------------------------------------------------------------- seeds


def test_t_quantile_against_scipy() -> None:
    from scipy import stats

    for df in (1, 2, 3, 5, 10, 29, 30, 31, 50, 200, 10_000):
        assert report.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4)
    with pytest.raises(ValueError):
        report.t_quantile_975(0)


def test_interval_by_hand() -> None:
    s = report.interval([0.6, 0.6, 0.3, None])
    mean, sd = 0.5, math.sqrt(((0.1**2) * 2 + 0.2**2) / 2)
    assert s["n"] == 3 and s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(sd)
    half = 4.3027 * sd / math.sqrt(3)
    assert (s["lo"], s["hi"]) == pytest.approx((mean - half, mean + half))
    one = report.interval([0.9])
    assert one["n"] == 1 and one["lo"] is None and one["std"] is None
    assert report.interval([None]) is None
    # AC of 0.6, 0.6, 0.1 (the default's seeds): the t interval runs past 0 and 1; cut to 0..1
    raw = report.interval([0.6, 0.6, 0.1])
    assert raw["lo"] < 0 and raw["hi"] > 1
    cut = report.interval([0.6, 0.6, 0.1], bounds=(0.0, 1.0))
    assert (cut["lo"], cut["hi"]) == (0.0, 1.0) and cut["half"] == raw["half"]


def test_paired_differences_per_seed() -> None:
    m = make_metrics()
    d = report.paired_differences(m, "hoc", "er", ("AM", "local_final"))
    assert d["seeds"] == [42, 43]
    am = [
        slow_metrics(h)["AM"] - slow_metrics(e)["AM"] for h, e in ((HOC_42, ER_42), (HOC_43, ER_43))
    ]
    assert d["per_seed"]["AM"] == pytest.approx(am)
    assert d["per_seed"]["local_final"] == pytest.approx([45.0 - 30.0, 47.0 - 32.0])
    assert d["stats"]["local_final"]["half"] == pytest.approx(0.0)
    assert report.paired_differences(m, "hoc", "nosuch") is None
    m["er"]["runs"][0]["seed"], m["er"]["runs"][1]["seed"] = 1, 2
    assert report.paired_differences(m, "hoc", "er") is None  # no seed in common


def test_report_gives_intervals_and_marks_single_seeds(tmp_path: Path) -> None:
    text = report.render_markdown(make_metrics(), tmp_path)
    assert "## Seeds: 95 % intervals" in text and "### hoc minus er, per seed pair" in text
    lo = report.interval([LOCAL[("hoc", 42)][-1], LOCAL[("hoc", 43)][-1]])
    assert f"{lo['mean']:.2f} [{lo['lo']:.2f}, {lo['hi']:.2f}]" in text
    assert "| mean [95 %], n=2 | " in text
    assert "(seed 42, a single seed of 2: the means are in the comparison table)" in text
    single = make_metrics()
    for m in ("hoc", "er"):
        single[m]["runs"] = single[m]["runs"][:1]
    single["_meta"]["seeds"] = [42]
    one = report.render_markdown(single, tmp_path)
    assert "**single seed (42)**" in one and "## Seeds" not in one
