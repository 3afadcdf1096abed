"""run_analysis: Definition 1 and stationarity read back from a real (tiny) run directory.

The tiny scenario (tests/e2e/tiny.yaml) is run once per module, in process, on the fake
Fashion-MNIST files; the analysis is then checked against direct calls of the analysis
functions on the run's own feature cache and checkpoints, and against slow loops.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compatkit.analysis import run as ra
from compatkit.analysis.models import eval_vertices
from compatkit.analysis.stats import definition1_pairs, stationarity_stats
from compatkit.checkpoint import load_checkpoint
from compatkit.cli import main as cli_main
from compatkit.config import DataSource, ProviderConfig, RunConfig
from compatkit.errors import InputError
from compatkit.model import ModelSpec, build_model

TINY = Path(__file__).parent / "e2e" / "tiny.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fake_fashion):
    old = os.environ.get("COMPATKIT_FASHION_MNIST")
    os.environ["COMPATKIT_FASHION_MNIST"] = str(fake_fashion)
    try:
        base = tmp_path_factory.mktemp("analysis_runs")
        run, nr = base / "tiny", base / "tiny_nr"
        assert cli_main(["run", str(TINY), "--out", str(run), "--quiet"]) == 0
        assert (
            cli_main(
                ["run", str(TINY), "--out", str(nr), "--quiet", "--set", "no_replacement=true"]
            )
            == 0
        )
        result = ra.analyze_run(run, max_pairs=50, no_replacement_run=nr)
        yield run, nr, result
    finally:
        if old is None:
            os.environ.pop("COMPATKIT_FASHION_MNIST", None)
        else:
            os.environ["COMPATKIT_FASHION_MNIST"] = old


def _cache(run: Path, method: str, t: int) -> dict:
    path = run / method / "seed_7" / "features" / f"task_{t}.features.pt"
    return torch.load(path, weights_only=True)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_schema_and_pair_bookkeeping(runs):
    run, _, result = runs
    on_disk = json.loads((run / "analysis.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["num_tasks"] == 3 and on_disk["replacement_tasks"] == [0, 2]
    assert set(on_disk["methods"]) == {"hoc", "er"}
    assert on_disk["methods"]["hoc"]["head"] == "simplex"
    assert on_disk["methods"]["er"]["head"] == "learnable"
    assert on_disk["settings"]["seeds"] == [7]
    for m in ("hoc", "er"):
        r = on_disk["methods"][m]["seeds"]["7"]
        assert [(p["k"], p["t"]) for p in r["pairs"]] == [(0, 1), (0, 2), (1, 2)]
        assert [p["consecutive"] for p in r["pairs"]] == [True, False, True]
        assert [p["replacements_between"] for p in r["pairs"]] == [[], [2], [2]]
        for metric in ("cosine", "euclidean"):
            s = r["summary"][metric]
            holds_s = [p[metric]["same"]["holds_in_expectation"] for p in r["pairs"]]
            holds_d = [p[metric]["diff"]["holds_in_expectation"] for p in r["pairs"]]
            assert s["all"]["pairs"] == 3
            assert s["all"]["same_holds"] == sum(holds_s)
            assert s["all"]["diff_holds"] == sum(holds_d)
            assert s["all"]["both_hold"] == sum(
                a and b for a, b in zip(holds_s, holds_d, strict=True)
            )
            assert s["consecutive"]["same_holds"] == holds_s[0] + holds_s[2]
            assert s["across_replacement"]["pairs"] == 2
            assert s["across_replacement"]["diff_holds"] == holds_d[1] + holds_d[2]
            assert s["within_segment"]["pairs"] == 1
            for p in r["pairs"]:
                g = p[metric]
                cm = p["class_margin"][metric]
                assert cm["cross_model"] == pytest.approx(
                    g["diff"]["expect_new"]["mean"] - g["same"]["expect_new"]["mean"]
                )
                assert cm["old_model"] == pytest.approx(
                    g["diff"]["expect_old"]["mean"] - g["same"]["expect_old"]["mean"]
                )
            assert s["all"]["cross_model_class_margin_mean"] == pytest.approx(
                sum(p["class_margin"][metric]["cross_model"] for p in r["pairs"]) / 3
            )
        assert len(r["stationarity"]) == 3 and len(r["loss"]) == 3
    assert any(line.startswith("hoc (seed 7, cosine): same-class") for line in result["verdicts"])
    hoc_line, er_line = result["stationarity_verdicts"]
    spread = [s["mean_spread"] for s in on_disk["methods"]["hoc"]["seeds"]["7"]["stationarity"]]
    shrinks = sum(b < a for a, b in pairwise(spread))
    assert hoc_line.startswith(f"hoc (seed 7): class spread {spread[0]:.3f} -> {spread[-1]:.3f}")
    assert f"shrinks at {shrinks}/2 updates" in hoc_line and "angle to vertex" in hoc_line
    assert "no fixed vertex" in er_line


def test_pairs_match_direct_definition1_on_the_cache(runs):
    run, _, result = runs
    for m in ("hoc", "er"):
        r = result["methods"][m]["seeds"]["7"]
        for p in r["pairs"]:
            new, old = _cache(run, m, p["t"]), _cache(run, m, p["k"])
            for metric in ("cosine", "euclidean"):
                direct = definition1_pairs(
                    new["query_features"],
                    old["query_features"],
                    old["gallery_features"],
                    old["query_labels"],
                    old["gallery_labels"],
                    metric=metric,
                    max_pairs=50,
                )
                assert p[metric] == direct, (m, p["k"], p["t"], metric)


def test_same_class_expectation_by_a_slow_loop(runs):
    """One pair, one group, recomputed exhaustively with plain loops (20 x 24 samples)."""
    run, _, _ = runs
    out = ra.analyze_sequence(
        ra.load_models(ra.load_run(run), "hoc", 7)[:2], [0, 2], ("cosine",), max_pairs=10**6
    )
    got = out["pairs"][0]["cosine"]["same"]
    new, old = _cache(run, "hoc", 1), _cache(run, "hoc", 0)
    qn = F.normalize(new["query_features"].double(), dim=1)
    qo = F.normalize(old["query_features"].double(), dim=1)
    go = F.normalize(old["gallery_features"].double(), dim=1)
    d_new, d_old, ok = [], [], 0
    for i in range(qn.shape[0]):
        for j in range(go.shape[0]):
            if old["query_labels"][i] != old["gallery_labels"][j]:
                continue
            a = 1.0 - float(qn[i] @ go[j])
            b = 1.0 - float(qo[i] @ go[j])
            d_new.append(a)
            d_old.append(b)
            ok += a <= b
    assert got["exhaustive"] and got["n_pairs"] == len(d_new) == 20 * 12
    assert got["frac"] == pytest.approx(ok / len(d_new))
    assert got["expect_new"]["mean"] == pytest.approx(sum(d_new) / len(d_new), abs=1e-9)
    assert got["expect_old"]["mean"] == pytest.approx(sum(d_old) / len(d_old), abs=1e-9)
    assert got["holds_in_expectation"] == (sum(d_new) <= sum(d_old))


def test_stationarity_uses_provider_vertices_and_drift_by_hand(runs):
    run, _, result = runs
    hoc = result["methods"]["hoc"]["seeds"]["7"]["stationarity"]
    er = result["methods"]["er"]["seeds"]["7"]["stationarity"]
    dirs = []
    for t in range(3):
        c = _cache(run, "hoc", t)
        feats = torch.cat([c["query_features"], c["gallery_features"]])
        labels = torch.cat([c["query_labels"], c["gallery_labels"]])
        model, _ = load_checkpoint(run / "hoc" / "seed_7" / f"task_{t}.pt")
        # eval classes 4, 5 are the providers' classes (fashion-mnist): rows 4, 5 from the top
        assert model.class_map.provider[4] == 4 and model.class_map.provider[5] == 5
        verts = model.head.weight[labels]  # provider class c sits on row c
        direct = stationarity_stats(feats, labels, verts)
        assert hoc[t]["vertex_space"] == "provider"
        assert hoc[t]["mean_angle_to_vertex_deg"] == pytest.approx(
            direct["mean_angle_to_vertex_deg"], abs=1e-9
        )
        assert hoc[t]["mean_spread"] == pytest.approx(direct["mean_spread"], abs=1e-9)
        x = F.normalize(feats.double(), dim=1)
        dirs.append([F.normalize(x[labels == k].mean(0), dim=0) for k in (4, 5)])
        # two classes: the separation is the one angle between their centres
        sep = math.degrees(math.acos(max(-1.0, min(1.0, float(dirs[-1][0] @ dirs[-1][1])))))
        assert hoc[t]["centre_separation_deg"] == pytest.approx(sep, abs=1e-6)
    for t in (1, 2):
        want = (
            sum(
                math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b)))))
                for a, b in zip(dirs[t], dirs[t - 1], strict=True)
            )
            / 2
        )
        assert hoc[t]["centre_drift_prev_deg"] == pytest.approx(want, abs=1e-6)
    assert hoc[0]["centre_drift_prev_deg"] is None
    assert [s["replaced"] for s in hoc] == [True, False, True]
    for s in er:
        assert s["mean_angle_to_vertex_deg"] is None and s["vertex_space"] is None
        assert "learnable" in s["vertex_note"]


def test_loss_records_are_the_logged_values(runs):
    run, _, result = runs
    for m in ("hoc", "er"):
        for rec in result["methods"][m]["seeds"]["7"]["loss"]:
            _, meta = load_checkpoint(run / m / "seed_7" / f"task_{rec['task']}.pt")
            assert rec["losses"] == meta["extra"]["losses"]
            assert rec["loss_parts"] == meta["extra"]["loss_parts"]
            assert rec["replaced"] == meta["extra"]["replaced"]
    assert set(result["methods"]["hoc"]["seeds"]["7"]["loss"][1]["loss_parts"][0]) == {
        "ce",
        "hoc",
    }


def test_plots_report_and_two_panel_aa(runs):
    run, nr, result = runs
    expected = {
        "plots/definition1_hoc.png",
        "plots/definition1_er.png",
        "plots/stationarity.png",
        "plots/loss_across_updates.png",
        "plots/aa_replacement_vs_none.png",
    }
    assert set(result["plots"]) == expected
    for p in expected:
        _png_size(run / p)
    # the comparison has two panels side by side: about twice as wide as a one-panel AA plot
    from compatkit.report import plot_aa

    plot_aa(ra.aa_curves(result_metrics(run)), [0, 2], run / "one_panel.png")
    w2, _ = _png_size(run / "plots/aa_replacement_vs_none.png")
    w1, _ = _png_size(run / "one_panel.png")
    assert w2 > 1.6 * w1
    # Figure 5 is the report's matrices.png: not drawn twice, embedded once
    assert not (run / "plots/figure5_matrices.png").exists()
    nr_metrics = json.loads((nr / "metrics.json").read_text())
    for m in ("hoc", "er"):
        assert result["aa"]["without_replacement"][m] == pytest.approx(nr_metrics[m]["AA"])
    report = (run / "report.md").read_text()
    assert "## Analysis: Definition 1 and stationarity" in report
    assert result["verdicts"][0] in report
    assert "![stationarity](plots/stationarity.png)" in report
    assert "plots/aa_replacement_vs_none.png" in report
    assert result["markdown"].strip() in report
    for link in re.findall(r"!\[[^]]*\]\((plots/[^)]+)\)", report):
        assert report.count(f"]({link})") == 1, link


def result_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_missing_cache_is_recomputed(runs, fake_fashion, monkeypatch):
    run, _, _ = runs
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    before = _cache(run, "er", 1)
    (run / "er" / "seed_7" / "features" / "task_1.features.pt").unlink()
    models = ra.load_models(ra.load_run(run), "er", 7)
    after = _cache(run, "er", 1)
    assert torch.allclose(models[1].query, before["query_features"], atol=1e-5)
    assert torch.allclose(after["gallery_features"], before["gallery_features"], atol=1e-5)
    assert torch.equal(after["query_labels"], before["query_labels"])


def test_refusals(runs, tmp_path):
    run, _, _ = runs
    with pytest.raises(InputError, match="not found"):
        ra.analyze_run(tmp_path / "nope")
    with pytest.raises(InputError, match=r"config\.yaml"):
        ra.analyze_run(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(InputError, match="compatkit eval"):
        ra.analyze_run(bare)
    with pytest.raises(ValueError, match="not in this run"):
        ra.analyze_run(run, methods=["lwf"], plots=False)
    with pytest.raises(ValueError, match="seed"):
        ra.analyze_run(run, seeds=[99], plots=False)
    with pytest.raises(ValueError, match="metric"):
        ra.analyze_run(run, metrics=("manhattan",), plots=False)


def _cfg(eval_ds: str = "fashion-mnist", local_ds: str = "fashion-mnist") -> RunConfig:
    cfg = RunConfig()
    cfg.eval.query = DataSource(dataset=eval_ds)
    cfg.eval.gallery = DataSource(dataset=eval_ds)
    cfg.local.data = DataSource(dataset=local_ds)
    cfg.providers = [
        ProviderConfig(data=DataSource(dataset="cifar10")),
        ProviderConfig(data=DataSource(dataset="fashion-mnist")),
    ]
    return cfg


def test_eval_vertices_choice():
    simplex = build_model(ModelSpec("smallcnn", 1, 9, "simplex", 10))
    simplex.add_classes([0, 1], "provider")
    simplex.add_classes([2, 3], "local")
    w = simplex.head.weight
    # provider classes, eval dataset = the provider's: rows from the top
    v, space, _ = eval_vertices(simplex, torch.tensor([0, 1, 1]), 1, _cfg())
    assert space == "provider" and torch.equal(v, w[[0, 1, 1]])
    # the same labels but this model descends from a cifar10 provider: not its classes
    v, space, why = eval_vertices(simplex, torch.tensor([0, 1]), 0, _cfg())
    assert v is None and space is None and "no vertex" in why
    # local classes of the local dataset: rows from the bottom (K-1-y)
    v, space, _ = eval_vertices(simplex, torch.tensor([2, 3]), 0, _cfg())
    assert space == "local" and torch.equal(v, w[[7, 6]])
    # a class the model never saw
    v, _, _ = eval_vertices(simplex, torch.tensor([2, 5]), 1, _cfg())
    assert v is None
    learn = build_model(ModelSpec("smallcnn", 1, 9, "learnable", 10))
    learn.add_classes([0, 1], "provider")
    v, space, why = eval_vertices(learn, torch.tensor([0, 1]), 1, _cfg())
    assert v is None and space is None and "learnable" in why


def test_summarize_pairs_counts_by_hand():
    def group(holds: bool, frac: float, low: float, high: float) -> dict:
        return {
            "frac": frac,
            "holds_in_expectation": holds,
            "gap_new_minus_old": {"low": low, "high": high},
        }

    pairs = [
        # k=0, t=1: both hold, same significantly (gap CI < 0), diff not (CI spans 0)
        {"k": 0, "t": 1, "consecutive": True, "replacements_between": [],
         "cosine": {"same": group(True, 0.6, -0.2, -0.1), "diff": group(True, 0.7, -0.1, 0.3)},
         "empirical": {"compatible": True}},
        # k=0, t=2: across a replacement, same fails, diff holds significantly
        {"k": 0, "t": 2, "consecutive": False, "replacements_between": [2],
         "cosine": {"same": group(False, 0.2, 0.1, 0.2), "diff": group(True, 0.9, 0.1, 0.2)},
         "empirical": {"compatible": False}},
        # k=1, t=2: consecutive and across a replacement, both fail
        {"k": 1, "t": 2, "consecutive": True, "replacements_between": [2],
         "cosine": {"same": group(False, 0.4, 0.0, 0.1), "diff": group(False, 0.5, -0.3, -0.1)},
         "empirical": {"compatible": True}},
    ]  # fmt: skip
    s = ra.summarize_pairs(pairs, "cosine")
    a = s["all"]
    assert (a["pairs"], a["same_holds"], a["diff_holds"], a["both_hold"]) == (3, 1, 2, 1)
    assert (a["same_significant"], a["diff_significant"], a["empirical_compatible"]) == (1, 1, 2)
    assert a["same_frac_mean"] == pytest.approx(0.4) and a["same_frac_min"] == pytest.approx(0.2)
    assert a["diff_frac_min"] == pytest.approx(0.5)
    c = s["consecutive"]
    assert (c["pairs"], c["same_holds"], c["diff_holds"], c["both_hold"]) == (2, 1, 1, 1)
    x = s["across_replacement"]
    assert (x["pairs"], x["same_holds"], x["diff_holds"], x["both_hold"]) == (2, 0, 1, 0)
    w = s["within_segment"]
    assert (w["pairs"], w["both_hold"]) == (1, 1)


def test_across_replacement():
    assert ra.across_replacement(0, 1, [0, 2, 4]) == []
    assert ra.across_replacement(1, 2, [0, 2, 4]) == [2]
    assert ra.across_replacement(0, 4, [0, 2, 4]) == [2, 4]
    assert ra.across_replacement(2, 3, [0, 2, 4]) == []
