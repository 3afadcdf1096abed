"""The gate with a foreign v1: the worked example's v1 exported to ONNX against its checkpoint.

    python benchmarks/bench_foreign_gate.py WORK_DIR

``WORK_DIR`` is a folder ``examples/upgrade/run.sh`` (or ``anchor.sh``) filled: its
``models/v1.pt`` is exported to ONNX (``compatkit export``), and every other model there
is checked (``compatkit check``) twice, against the checkpoint and against the ONNX file
as OLD. Reported per candidate: both decisions and the largest difference between the
entries of the "all queries" group (recall@1, mAP, template: old/old, new/old, new/new, in
points). A foreign model names no classes, so its verdicts have no old/unseen split; the
decision (scope ``all``) must be identical and the entries equal within float tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _results import DEFAULT_RESULTS, command_line, machine, md_table, render_section, write_section


def entries(verdict: dict) -> dict[str, float]:
    out = {}
    for metric, t in verdict["groups"]["all"]["metrics"].items():
        for k in ("old_old", "new_old", "new_new"):
            out[f"{metric} {k}"] = t[k]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    from compatkit.upgrade.export import export_checkpoint
    from compatkit.upgrade.gate import run_check

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = p.parse_args(argv)
    m, d = args.work / "models", args.work / "data"
    onnx = export_checkpoint(m / "v1.pt", "onnx", args.work / "v1-foreign.onnx", name="v1").path
    rows = []
    for cand in sorted(m.glob("*.pt")):
        if cand.name == "v1.pt":
            continue
        t = time.perf_counter()
        a = run_check(str(m / "v1.pt"), str(cand), str(d / "query"), str(d / "gallery"), "recall@1")
        b = run_check(str(onnx), str(cand), str(d / "query"), str(d / "gallery"), "recall@1")
        ea, eb = entries(a), entries(b)
        diff = max(abs(ea[k] - eb[k]) for k in ea)
        rows.append(
            {
                "candidate": cand.stem,
                "checkpoint": a["compatible"],
                "onnx": b["compatible"],
                "r1": (ea["recall@1 old_old"], ea["recall@1 new_old"], ea["recall@1 new_new"]),
                "diff": diff,
                "seconds": time.perf_counter() - t,
            }
        )
        print(rows[-1], flush=True)
    table = md_table(
        ["v2", "recall@1 all (old/old, new/old, new/new)", "gate, v1.pt", "gate, v1.onnx",
         "largest entry difference (points)"],
        [
            (r["candidate"], " / ".join(f"{v:.2f}" for v in r["r1"]),
             "pass" if r["checkpoint"] else "fail", "pass" if r["onnx"] else "fail",
             f"{r['diff']:.2e}")
            for r in rows
        ],
    )  # fmt: skip
    same = all(r["checkpoint"] == r["onnx"] for r in rows)
    body = (
        "The worked example's v1 (`examples/upgrade`) exported to ONNX and used as a foreign "
        "OLD, against the checkpoint itself, for every candidate v2: "
        f"{'identical' if same else 'DIFFERENT'} decisions; entries of the all-queries "
        "group (recall@1, mAP, template; old/old, new/old, new/new) compared.\n\n"
        f"{table}\n"
    )
    text = render_section(
        "bench_foreign_gate",
        "bench_foreign_gate: the gate with an ONNX v1 against its checkpoint",
        command_line(__file__, argv if argv is not None else sys.argv[1:]),
        machine("cpu"),
        body,
    )
    write_section(args.results, "bench_foreign_gate", text)
    return rows


if __name__ == "__main__":
    main()
