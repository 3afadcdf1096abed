"""Smoke tests of the benchmark scripts (``--quick``: tiny sizes, seconds) and of the helpers
they share, so that the scripts keep running as the library changes. Results go to a file in
a temporary folder, never to benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import importlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

_results = importlib.import_module("_results")


def _bench(name: str):
    return importlib.import_module(name)


def _section(path: Path, name: str) -> str:
    text = _results.read_section(path, name)
    assert text is not None, f"no section {name} in {path.read_text()}"
    return text


def _check_provenance(text: str, script: str, tmp_path: Path, args: str = "--quick") -> None:
    assert f"Command: `python benchmarks/{script} {args}`" in text
    assert "Machine: " in text and "torch " in text and " cores " in text
    assert f"Date: {datetime.date.today().isoformat()}" in text
    assert str(tmp_path) not in text  # no path of this machine in the results


# ----------------------------------------------------------------------------- results file


def test_sections_are_created_and_replaced_alone(tmp_path: Path) -> None:
    res = tmp_path / "RESULTS.md"
    info = _results.machine("cpu")
    a1 = _results.render_section("a", "A", "python benchmarks/a.py", info, "first")
    b1 = _results.render_section("b", "B", "python benchmarks/b.py", info, "| x |\n|---|\n| 1 |")
    _results.write_section(res, "a", a1)
    assert res.read_text().startswith("# Benchmark results")
    _results.write_section(res, "b", b1)
    res.write_text(res.read_text() + "\nA note someone added by hand.\n")
    before = res.read_text()
    a2 = _results.render_section("a", "A", "python benchmarks/a.py", info, "second, longer")
    _results.write_section(res, "a", a2)
    after = res.read_text()
    assert _results.read_section(res, "a") == a2
    assert _results.read_section(res, "b") == b1
    # Everything outside section a is byte for byte what it was.
    i, j = before.index(a1), after.index(a2)
    assert before[:i] == after[:j] and before[i + len(a1) :] == after[j + len(a2) :]
    assert after.count("<!-- BEGIN a -->") == 1


def test_section_text_must_match_its_name(tmp_path: Path) -> None:
    info = _results.machine("cpu")
    with pytest.raises(ValueError, match="markers"):
        _results.write_section(
            tmp_path / "R.md", "b", _results.render_section("a", "A", "c", info, "x")
        )
    with pytest.raises(ValueError, match="section name"):
        _results.render_section("a b", "A", "c", info, "x")
    broken = tmp_path / "broken.md"
    broken.write_text("<!-- BEGIN a -->\nno end marker\n")
    with pytest.raises(ValueError, match="no matching"):
        _results.write_section(broken, "a", _results.render_section("a", "A", "c", info, "x"))


def test_command_line_and_machine() -> None:
    cmd = _results.command_line(
        "/somewhere/benchmarks/bench_x.py", ["--quick", "--results", "/t/R.md", "--steps", "3"]
    )
    assert cmd == "python benchmarks/bench_x.py --quick --steps 3"
    assert (
        _results.command_line("bench_x.py", ["--results=/t/R.md"]) == "python benchmarks/bench_x.py"
    )
    info = _results.machine("cpu")
    assert info["cores"] >= 1 and info["torch"] == torch.__version__ and info["gpu"] is None
    line = _results.machine_line(info)
    assert "device cpu" in line and info["cpu"] in line
    assert _results.md_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


# ----------------------------------------------------------------------------- the scripts


def test_bench_backbones_quick(tmp_path: Path) -> None:
    from compatkit.backbones import BACKBONES

    res = tmp_path / "R.md"
    argv = ["--quick", "--thread-counts", "1", "2", "--results", str(res)]
    figures = _bench("bench_backbones").main(argv)
    assert sorted(figures) == sorted(BACKBONES)
    for f in figures.values():
        assert f["params"] > 0
        for threads in (1, 2):
            assert f[threads]["train_images_per_s"] > 0 and f[threads]["extract_images_per_s"] > 0
    text = _section(res, "bench_backbones")
    _check_provenance(text, "bench_backbones.py", tmp_path, "--quick --thread-counts 1 2")


def test_per_sample_pipeline_is_the_same_augmentation() -> None:
    """Each per-sample image equals compatkit's crop_flip of the same image at some offset and
    flip, normalised the same way: the two paths do the same augmentation."""
    from compatkit.data import crop_flip, to_float

    bt = _bench("bench_train")
    g = torch.Generator().manual_seed(0)
    for c in (1, 3):
        images = torch.randint(0, 256, (6, c, 7, 5), generator=g, dtype=torch.uint8)
        mean, std = bt._stats(c)
        pad = 2
        ds = bt.PerSampleDataset(images.numpy(), np.arange(6), pad, True, mean, std)
        seen_flip = set()
        for i in range(6):
            x, y = ds[i]
            assert y == i and x.shape == (c, 7, 5) and x.dtype == torch.float32
            one = images[i : i + 1]
            matches = [
                (dy, dx, f)
                for dy, dx, f in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (0, 1))
                if torch.allclose(
                    to_float(
                        crop_flip(
                            one,
                            torch.tensor([dy]),
                            torch.tensor([dx]),
                            torch.tensor([bool(f)]),
                            pad,
                        ),
                        mean,
                        std,
                    )[0],
                    x,
                    atol=1e-5,
                )
            ]
            assert matches, f"sample {i} is no crop/flip of its image"
            seen_flip.update(f for _, _, f in matches)
        # Without padding or flip the pipeline is just the normalisation.
        plain = bt.PerSampleDataset(images.numpy(), np.arange(6), 0, False, mean, std)
        torch.testing.assert_close(plain[3][0], to_float(images[3:4], mean, std)[0])


def test_bench_train_quick(tmp_path: Path) -> None:
    res = tmp_path / "R.md"
    figures = _bench("bench_train").main(["--quick", "--results", str(res)])
    f = figures["smallcnn"]
    for k in ("compatkit", "per_sample_w0", "data_compatkit", "data_per_sample_w0"):
        assert f[k] > 0, k
    assert figures["resnet18_cifar"]["compatkit"] > 0
    _check_provenance(_section(res, "bench_train"), "bench_train.py", tmp_path)


def test_bench_eval_quick(tmp_path: Path) -> None:
    res = tmp_path / "R.md"
    figures = _bench("bench_eval").main(["--quick", "--results", str(res)])
    f = figures["T"][3]
    assert f["compatkit_extractions"] == 6 and f["reference_extractions"] == 12
    assert f["reference_pairs_timed"] == 6 and not f["extrapolated"]
    assert figures["cli"] is None
    _check_provenance(_section(res, "bench_eval"), "bench_eval.py", tmp_path)


def test_reference_matrix_rows_and_values(tmp_path: Path) -> None:
    """The reference loop computes only the rows asked for, with the same metric values as
    the library's matrix."""
    from compatkit.data import to_float
    from compatkit.protocol.evaluate import extract_features
    from compatkit.retrieval import cross_model_matrix
    from compatkit.runtime.device import Precision, Runtime

    be = _bench("bench_eval")
    common = _bench("_common")
    ckpts = be.make_checkpoints(tmp_path, 3)
    q = common.random_imageset(30, (1, 28, 28), 4, seed=1)
    g = common.random_imageset(20, (1, 28, 28), 4, seed=2)

    def norm(x):
        return to_float(x, (0.5,), (0.25,))

    ref, pairs = be.reference_matrix(ckpts, q, g, norm, 16, torch.device("cpu"), rows=[2])
    assert pairs == 3 and np.isnan(ref[:2]).all() and np.isfinite(ref[2]).all()
    from compatkit.checkpoint import load_checkpoint

    models = [load_checkpoint(c)[0] for c in ckpts]
    rt = Runtime(torch.device("cpu"), Precision(None, False), norm)
    qf = [extract_features(m, q, rt, 16) for m in models]
    gf = [extract_features(m, g, rt, 16) for m in models]
    np.testing.assert_allclose(cross_model_matrix(qf, gf, q.labels, g.labels)[2], ref[2])


def test_bench_scaling_quick(tmp_path: Path) -> None:
    res = tmp_path / "R.md"
    figures = _bench("bench_scaling").main(["--quick", "--results", str(res)])
    assert sorted(figures["tasks"]) == [2, 3]
    for t, f in figures["tasks"].items():
        assert f["extractions"] == t and f["train_s"] > 0
    assert sorted(figures["gallery"]) == [50, 100]
    _check_provenance(_section(res, "bench_scaling"), "bench_scaling.py", tmp_path)


@pytest.mark.slow
def test_bench_memory_quick(tmp_path: Path) -> None:
    res = tmp_path / "R.md"
    figures = _bench("bench_memory").main(["--quick", "--results", str(res)])
    run, imp = figures["run"], figures["import"]
    assert run["max_rss_bytes"] > imp["max_rss_bytes"] > 10 * 2**20
    assert run["wall_s"] > 0 and run["tasks"] == 2
    _check_provenance(_section(res, "bench_memory"), "bench_memory.py", tmp_path)


@pytest.mark.slow
def test_bench_eval_cli_cache(tmp_path: Path) -> None:
    """`compatkit eval` twice: the second finds every feature in the cache."""
    res = tmp_path / "R.md"
    figures = _bench("bench_eval").main(["--quick", "--cli", "--results", str(res)])
    cli = figures["cli"]
    assert cli["cold"]["extractions"] == cli["models"] == 2  # 1 method x 2 tasks
    assert cli["warm"]["extractions"] == 0


# ----------------------------------------------------------------------------- gpu_check


def test_gpu_check_helpers() -> None:
    gc = _bench("gpu_check")
    assert gc.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gc.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gc.peak_flops("NVIDIA H200") == 989e12
    assert gc.peak_flops("Tesla T4") == 65e12
    assert gc.peak_flops("NVIDIA L4") == 121e12
    assert gc.peak_flops("NVIDIA L40S") == 362e12
    assert gc.peak_flops("Some Future GPU") is None
    # A bias-free linear map of 10 -> 5: 50 multiply-adds, 100 FLOPs per image.
    lin = torch.nn.Linear(10, 5, bias=False)
    assert gc.flops_per_image(lin, (10,), torch.device("cpu")) == 100


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit path without CUDA")
def test_gpu_check_without_cuda_exits_cleanly(capsys, tmp_path: Path) -> None:
    gc = _bench("gpu_check")
    assert gc.main(["--results", str(tmp_path / "R.md")]) == 0
    assert "no CUDA device: nothing to check" in capsys.readouterr().out
    assert not (tmp_path / "R.md").exists()


def test_gpu_check_cpu_dry_run(tmp_path: Path) -> None:
    """Every check's code runs (on the CPU, gloo, tiny sizes) and passes."""
    gc = _bench("gpu_check")
    res = tmp_path / "R.md"
    assert gc.main(["--cpu-dry-run", "--results", str(res)]) == 0
    text = _section(res, "gpu_check")
    assert "FAIL" not in text and text.count("| PASS |") == 8


def test_methods_table_writes_its_section(tmp_path) -> None:
    """methods_table.py turns a run's metrics.json into the RESULTS.md comparison section."""
    import json

    from compatkit.metrics import compatibility_report, load_matrix

    mats = {"hoc": [[90.0], [91.0, 89.0]], "er": [[80.0], [20.0, 85.0]]}
    metrics = {
        "_meta": {
            "seeds": [1],
            "num_tasks": 2,
            "replacement_tasks": [0, 1],
            "methods": ["hoc", "er"],
            "wall_time_s": 60.0,
            "device": "cpu",
        }
    }
    for name, mat in mats.items():
        rep = compatibility_report(load_matrix(mat)).to_dict()
        run = {"seed": 1, "matrix": mat, **rep, "final_self": mat[-1][-1]}
        run |= {"local_accuracy": [60.0, 50.0], "local_final": 50.0, "local_mean": 55.0}
        metrics[name] = {**run, "runs": [run], "seeds": [1]}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "R.md"
    mod = _bench("methods_table")
    assert mod.main([str(run_dir), "--results", str(out)]) == 0
    text = out.read_text()
    assert "<!-- BEGIN methods_table -->" in text and "### er (seed 1)" in text
    assert "| hoc | 1.00" in text and "| er | 0.00" in text  # AC of each hand matrix
    # plasticity beside compatibility: the final local-class accuracy, its mean over tasks
    assert "final local acc. (%) | mean local acc. (%)" in text
    assert text.count("| 50.00 | 55.00 |") == 2


def test_front_table_writes_its_section(tmp_path) -> None:
    """front_table.py turns a sweep's summary.json into the RESULTS.md front section."""
    import json

    def st(mean, std, n=3):
        return {"mean": mean, "std": std, "n": n, "values": [mean] * n}

    rows = [
        {"method": "hoc", "values": {"method_options.hoc.lam": "0.1"}, "seeds": [1, 2, 3],
         "stats": {"AC": st(0.7, 0.1), "AM": st(91.0, 0.5), "local_final": st(55.0, 4.0),
                   "local_mean": st(70.0, 2.0), "local_gain": st(25.0, 3.0),
                   "final_self": st(94.0, 0.2)},
         "front": {"AM": True, "AC": True}},
        {"method": "er", "values": {"method_options.hoc.lam": None}, "seeds": [1],
         "stats": {"AC": st(0.0, 0.0, 1), "AM": st(45.0, 0.0, 1), "local_final": st(30.0, 0.0, 1),
                   "local_mean": st(40.0, 0.0, 1), "local_gain": None,
                   "final_self": st(70.0, 0.0, 1)},
         "front": {"AM": False, "AC": False}},
    ]  # fmt: skip
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    summary = {"commands": [], "varied": ["method_options.hoc.lam"], "rows": rows, "pending": []}
    (sweep / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "R.md"
    mod = _bench("front_table")
    assert mod.main([str(sweep), "--command", "compatkit sweep X", "--results", str(out)]) == 0
    text = out.read_text()
    assert "<!-- BEGIN front -->" in text and "compatkit sweep X" in text
    assert "| hoc | 0.1 | 3 | 0.70 ± 0.10 | 91.00 ± 0.50 | 55.00 ± 4.00 | 70.00 ± 2.00 " in text
    assert "| er | — | 1 | 0.00 | 45.00 | 30.00 | 40.00 | n/a | 70.00 |  |" in text
    assert "(final local acc., AM), from the most compatible to the most plastic: hoc " in text


def test_bench_metrics_quick(tmp_path: Path) -> None:
    res = tmp_path / "R.md"
    figures = _bench("bench_metrics").main(["--quick", "--results", str(res)])
    assert sorted(figures) == [50, 100]
    for f in figures.values():
        assert f["max_abs_diff"] < 1e-9  # the O(T^2) curve is the per-block mean's
    _check_provenance(_section(res, "bench_metrics"), "bench_metrics.py", tmp_path)


# ----------------------------------------------------------------------------- robustness grid


def test_robustness_orders_are_permutations_with_the_default_first() -> None:
    rg = _bench("robustness_grid")
    orders = rg.draw_orders([1, 3, 4, 5, 6, 8], 8, 2024)
    assert orders[0] == [1, 3, 4, 5, 6, 8]
    assert len({tuple(o) for o in orders}) == 8
    assert all(sorted(o) == [1, 3, 4, 5, 6, 8] for o in orders)
    assert rg.draw_orders([1, 3, 4, 5, 6, 8], 8, 2024) == orders  # the seed fixes the grid


def test_robustness_pair_records_by_hand() -> None:
    """Three models, replacement at zero-based task 1: C = [[80], [75, 90], [85, 91, 88]].
    Pairs: (1,0) gap -5 fails across the replacement, (2,0) +5 passes across it, (2,1) +1
    passes within provider 1."""
    rg = _bench("robustness_grid")
    run = {"seed": 42, "matrix": [[80.0], [75.0, 90.0], [85.0, 91.0, 88.0]],
           "tasks": [[1, 3], [4], [5]], "reps": [1]}  # fmt: skip
    cells = {("hoc", (1, 3, 4, 5), 0): [run]}
    recs = {(r["i"], r["j"]): r for r in rg.pair_records(cells, [((1, 3, 4, 5), 0)])}
    assert set(recs) == {(1, 0), (2, 0), (2, 1)}
    assert recs[(1, 0)]["gap"] == -5.0 and not recs[(1, 0)]["ok"]
    assert recs[(1, 0)]["span"] == "across a replacement" and recs[(1, 0)]["query_replaced"]
    assert recs[(2, 0)]["ok"] and recs[(2, 0)]["span"] == "across a replacement"
    assert recs[(2, 1)]["ok"] and recs[(2, 1)]["span"] == "within one provider"
    assert (recs[(2, 1)]["query_class"], recs[(2, 1)]["gallery_class"]) == (5, 4)
    assert recs[(1, 0)]["gallery_class"] == 3  # the first task's second class
    text = rg.why_tables(list(recs.values()))
    # across a replacement: 1 of 2 fail, mean gap 0.0; within: 0 of 1
    assert "| across a replacement | 2 | 50 % | +0.0 |" in text
    assert "| within one provider | 1 | 0 % | +1.0 |" in text
    assert "| 4 Coat | 1 | 100 % | -5.0 |" in text


@pytest.mark.slow
def test_bench_stream_train_quick(tmp_path: Path) -> None:
    res = tmp_path / "R.md"
    rows = _bench("bench_stream_train").main(["--quick", "--results", str(res)])
    assert [(r["size"], r["mode"]) for r in rows] == [
        (30, "memory"),
        (30, "stream"),
        (60, "memory"),
        (60, "stream"),
    ]
    for mem, st in (rows[:2], rows[2:]):
        assert mem["loss"] == st["loss"]  # the same training either way
        assert mem["images"] == st["images"] == mem["size"]
    assert all(r["rate"] > 0 and r["rss_main_mib"] > 10 for r in rows)
    _check_provenance(_section(res, "bench_stream_train"), "bench_stream_train.py", tmp_path)


def test_robustness_spearman_against_the_textbook_formula_and_by_hand() -> None:
    rg = _bench("robustness_grid")
    rng = np.random.default_rng(3)
    for _ in range(20):  # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
        a, b = rng.permutation(9).astype(float), rng.permutation(9).astype(float)
        d2 = float(((a - b) ** 2).sum())
        assert rg.spearman(a, b) == pytest.approx(1 - 6 * d2 / (9 * 80))
    # Ties share their mean rank: [0.4, 0.4, 0.1, 0.7] -> ranks [2.5, 2.5, 1, 4].
    np.testing.assert_array_equal(rg.ranks(np.array([0.4, 0.4, 0.1, 0.7])), [2.5, 2.5, 1, 4])
    assert rg.spearman(np.array([1.0, 2, 3]), np.array([30.0, 20, 10])) == pytest.approx(-1)
    assert np.isnan(rg.spearman(np.array([0.5, 0.5, 0.5]), np.array([1.0, 2, 3])))
    runs = [{"AC": a, "local_final": loc} for a, loc in ((0.7, 55), (0.6, 40), (0.2, 60))]
    line = rg.tradeoff(runs, np.array([0.5, 0.3]), np.array([50.0, 60.0]))
    assert "Spearman -0.50 over 3 runs" in line and "-1.00 over the 2 cells" in line
    assert "AC >= 0.6 and final local accuracy >= 50 %: 1 of 3" in line


def test_robustness_reads_a_partial_setting_and_names_its_missing_seed(tmp_path) -> None:
    """A setting whose seed 43 diverged (its job record keeps the error) counts with the two
    seeds that finished, from their done.json; the missing one is named with the error."""
    import yaml

    from compatkit.config import load_config, to_dict

    rg = _bench("robustness_grid")
    cfg = to_dict(load_config(Path(__file__).parents[1] / "configs" / "fashion.yaml"))
    cfg.update(methods=["er"], seeds=[42, 43, 44], data_seed=1)
    cfg["local"]["data"]["classes"] = [5, 8, 3, 4, 6, 1]
    run = tmp_path / "runs" / "er-x"
    (run / "er" / "seed_43").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for seed, ac in ((42, 0.1), (44, 0.0)):
        (run / "er" / f"seed_{seed}").mkdir()
        done = {"seed": seed, "AC": ac, "AM": 40.0 + seed, "local_final": 50.0}
        (run / "er" / f"seed_{seed}" / "done.json").write_text(json.dumps(done))
    failed = {"seed": 43, "failed": "er seed 43 task 3/5: the training loss became non-finite"}
    (run / "er" / "seed_43" / "job.json").write_text(json.dumps(failed))
    cells = rg.read_grid(tmp_path)
    runs = cells[("er", (5, 8, 3, 4, 6, 1), 1)]
    assert [(r["seed"], r["AM"], r["partial"]) for r in runs] == [
        (42, 82.0, True),
        (44, 84.0, True),
    ]
    assert rg.missing_runs(tmp_path) == [
        "ER, classes [5, 8, 3, 4, 6, 1], data_seed 1, seed 43: er seed 43 task 3/5: the training "
        "loss became non-finite"
    ]


def test_bench_index_command_line_leaves_out_scratch_and_results_paths() -> None:
    bi = _bench("bench_index")
    argv = ["--pairs", "1000000x1023", "--tmp", "/scratch", "--results=/r/R.md", "--threads", "1"]
    assert bi._without_tmp(argv) == ["--pairs", "1000000x1023", "--threads", "1"]
    assert bi._without_tmp(["--results", "R.md", "--quick"]) == ["--quick"]
