"""figures: the plotted numbers are the numbers given, and the K=3 demo shows stationarity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from compatkit.analysis import demo as simplex_demo
from compatkit.analysis import figures

from .plot_checks import assert_legends_outside

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def captured(monkeypatch):
    """Keep every saved figure (the real ``_save`` clears it) so its artists can be read."""
    figs = []

    def save(fig, path):
        figs.append(fig)
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=60)
        return p

    monkeypatch.setattr(figures, "_save", save)
    return figs


def _group(frac, e_new, e_old):
    return {
        "frac": frac,
        "expect_new": {"mean": e_new},
        "expect_old": {"mean": e_old},
        "holds_in_expectation": None,
        "gap_new_minus_old": {},
    }


def test_definition1_heat_maps_hold_the_given_numbers(captured, tmp_path):
    # 3 models: pairs (0,1), (0,2), (1,2); values chosen so every cell differs
    vals = {
        (0, 1): (0.1, 0.2, 0.5, 0.4),
        (0, 2): (0.3, 0.6, 0.2, 0.7),
        (1, 2): (0.9, 0.8, 0.1, 0.3),
    }
    pairs = []
    for (k, t), (sf, df, e_new, e_old) in vals.items():
        pairs.append(
            {
                "k": k,
                "t": t,
                "cosine": {
                    "same": _group(sf, e_new, e_old),
                    "diff": _group(df, e_new + 0.05, e_old),
                },
            }
        )
    path = figures.plot_definition1(pairs, 3, [0, 2], "cosine", "demo", tmp_path / "d1.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    (fig,) = captured
    axes = [ax for ax in fig.axes if ax.images]
    same_f, diff_f, same_m, diff_m = (np.ma.filled(ax.images[0].get_array(), np.nan) for ax in axes)
    for (k, t), (sf, df, e_new, e_old) in vals.items():
        assert same_f[t - 1, k] == pytest.approx(sf)
        assert diff_f[t - 1, k] == pytest.approx(df)
        assert same_m[t - 1, k] == pytest.approx(e_old - e_new)  # > 0: same-class holds
        assert diff_m[t - 1, k] == pytest.approx(e_new + 0.05 - e_old)  # > 0: diff holds
    assert np.isnan(same_f[0, 1])  # upper triangle left blank
    texts = [t.get_text() for t in axes[2].texts]
    assert any(s.startswith("✗") for s in texts) and any(s.startswith("✓") for s in texts)


def test_loss_plot_uses_the_logged_values(captured, tmp_path):
    hist = [
        {"task": 0, "replaced": True, "losses": [3.0, 2.0], "loss_parts": [
            {"ce": 5.0, "hoc": 2.5}, {"ce": 4.0, "hoc": 1.8}]},
        {"task": 1, "replaced": False, "losses": [1.5, 1.2], "loss_parts": [
            {"ce": 3.0, "hoc": 1.3}, {"ce": 2.5, "hoc": 1.1}]},
        {"task": 2, "replaced": True, "losses": [2.2, 1.0], "loss_parts": [
            {"ce": 4.4, "hoc": 2.0}, {"ce": 2.0, "hoc": 0.9}]},
    ]  # fmt: skip
    figures.plot_loss_across_updates({"hoc": hist}, [0, 2], tmp_path / "loss.png", seed=1)
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC
    (fig,) = captured
    ax = fig.axes[0]
    by_label = {ln.get_label(): ln for ln in ax.lines}
    total = by_label["total loss"]
    assert list(total.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(total.get_ydata()) == [3.0, 2.0, 1.5, 1.2, 2.2, 1.0]
    assert list(by_label["CE part (unweighted)"].get_ydata()) == [5.0, 4.0, 3.0, 2.5, 4.4, 2.0]
    assert list(by_label["HOC part (unweighted)"].get_ydata()) == [2.5, 1.8, 1.3, 1.1, 2.0, 0.9]
    vlines = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_linestyle() == "--"]
    # one replacement boundary, before task 2's first epoch (x = 4.5); task 1's is a plain line
    assert [float(ln.get_xdata()[0]) for ln in vlines] == [4.5]


def test_stationarity_plot_lines(captured, tmp_path):
    def rec(t, spread, ang, drift):
        return {
            "task": t,
            "mean_spread": spread,
            "mean_angle_to_vertex_deg": ang,
            "mean_direction_angle_deg": None if ang is None else ang / 2,
            "centre_drift_prev_deg": drift,
            "centre_drift_first_deg": drift,
        }

    series = {
        "hoc": [rec(0, 0.3, 20.0, None), rec(1, 0.2, 21.0, 1.0), rec(2, 0.1, 19.0, 2.0)],
        "er": [rec(0, 0.4, None, None), rec(1, 0.35, None, 30.0), rec(2, 0.3, None, 80.0)],
    }
    figures.plot_stationarity(series, [0, 2], tmp_path / "st.png")
    (fig,) = captured
    spread_ax, angle_ax, drift_ax = fig.axes
    spread = {ln.get_label(): list(ln.get_ydata()) for ln in spread_ax.lines}
    assert spread["hoc"] == [0.3, 0.2, 0.1] and spread["er"] == [0.4, 0.35, 0.3]
    angle = {ln.get_label(): list(ln.get_ydata()) for ln in angle_ax.lines}
    assert angle["hoc: features"] == [20.0, 21.0, 19.0]
    assert not any(k.startswith("er") for k in angle)  # no vertices for a learnable head
    drift = {ln.get_label(): list(ln.get_ydata()) for ln in drift_ax.lines}
    assert drift["er: from previous"] == [30.0, 80.0]


@pytest.mark.slow
def test_simplex_demo_on_separable_data(tmp_path, fake_fashion, monkeypatch):
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    cfg = simplex_demo.DemoConfig(
        classes=(0, 1, 3),  # fake classes 0 and 2 are mirror images: a flip would mix them
        old_per_class=40,
        new_per_class=40,
        test_per_class=12,
        epochs=4,
        batch_size=8,
    )
    res = simplex_demo.simplex_demo(tmp_path / "demo", cfg)
    png = tmp_path / "demo" / "simplex_demo.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    on_disk = json.loads((tmp_path / "demo" / "simplex_demo.json").read_text())
    assert set(on_disk["models"]) == {
        f"{h}/{r}" for h in ("simplex", "learnable") for r in ("old", "update", "retrained")
    }
    m = res["models"]
    for role in ("old", "update", "retrained"):
        s = m[f"simplex/{role}"]
        assert s["head"] == "simplex"
        # every class centre sits in its own vertex's cone (< 60 degrees for K = 3), i.e.
        # nearer its vertex than any other; a random direction would average 90 degrees
        for c, v in s["per_class"].items():
            assert v["mean_direction_angle_deg"] < 60.0, (role, c, v)
        assert s["mean_direction_angle_deg"] < 50.0
    # the d-Simplex vertices are the same in every model; learnable rows are not
    rows = [np.asarray(m[f"simplex/{r}"]["head_rows"]) for r in ("old", "update", "retrained")]
    assert np.allclose(rows[0], rows[1]) and np.allclose(rows[0], rows[2])
    # K=3 simplex: unit rows at 120 degrees
    cos = rows[0] @ rows[0].T
    assert np.allclose(np.diag(cos), 1.0, atol=1e-6)
    assert np.allclose(cos[~np.eye(3, dtype=bool)], -0.5, atol=1e-6)
    # an independently trained d-Simplex model keeps the centres; a learnable one does not
    assert m["simplex/retrained"]["centre_drift_from_old_deg"] < 30.0
    assert (
        m["learnable/retrained"]["centre_drift_from_old_deg"]
        > m["simplex/retrained"]["centre_drift_from_old_deg"]
    )
    assert m["simplex/old"]["centre_drift_from_old_deg"] == pytest.approx(0.0, abs=1e-6)
    d1 = res["definition1_vs_old"]
    assert set(d1) == {"simplex/update", "simplex/retrained", "learnable/update",
                       "learnable/retrained"}  # fmt: skip
    for d in d1.values():
        assert d["same_set"] and d["same"]["n_total"] == 3 * 12 * 11
        assert 0.0 <= d["same"]["frac"] <= 1.0 and not math.isnan(d["diff"]["frac"])


def test_demo_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="three distinct"):
        simplex_demo.simplex_demo(tmp_path, simplex_demo.DemoConfig(classes=(0, 1, 1)))
    with pytest.raises(ValueError, match=">= 1"):
        simplex_demo.simplex_demo(tmp_path, simplex_demo.DemoConfig(epochs=0))


def test_figure_legends_cover_no_curve(captured, tmp_path):
    def rec(t, spread, ang, drift):
        return {
            "task": t,
            "mean_spread": spread,
            "mean_angle_to_vertex_deg": ang,
            "mean_direction_angle_deg": ang,
            "centre_drift_prev_deg": drift,
            "centre_drift_first_deg": drift,
        }

    series = {"hoc": [rec(0, 0.3, 20.0, None), rec(1, 0.2, 21.0, 1.0), rec(2, 0.1, 19.0, 2.0)]}
    figures.plot_stationarity(series, [0, 2], tmp_path / "st.png")
    hist = [
        {"task": t, "replaced": t != 1, "losses": [3.0, 2.0], "loss_parts": [{"ce": 5.0}] * 2}
        for t in range(3)
    ]
    figures.plot_loss_across_updates({"hoc": hist, "cores": hist}, [0, 2], tmp_path / "l.png")
    assert sum(assert_legends_outside(f) for f in captured) == 5
