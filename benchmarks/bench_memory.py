"""Peak memory and wall time of a full default run: ``python -m compatkit run --quiet``.

The run (providers, both methods through every task, evaluation, report) goes
in a child process started by a small wrapper process, and the wrapper reads
``resource.getrusage(RUSAGE_CHILDREN)`` after the child exits: the maximum
resident set size of the run, with nothing else this script did mixed in. For
scale, the same is measured for a process that only imports torch and
compatkit (what any command costs before it does anything).

The default run reads Fashion-MNIST from wherever compatkit finds it (and
downloads it when the configuration allows and it is missing). ``--quick``
runs a reduced configuration (``--set`` overrides, one epoch everywhere) on
small synthetic files in the Fashion-MNIST format instead.

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    base_parser,
    default_config,
    finish,
    run_command,
    setup,
    small_run_sets,
    write_fake_fashion,
)
from _results import md_table

NAME = "bench_memory"
TITLE = "bench_memory: peak memory and wall time of the default run"

__all__ = ["main", "measure"]

# Runs argv[1:] as a child and reports its resource use: the wrapper's only child is the
# measured command, so RUSAGE_CHILDREN's maximum resident set is that command's.
_WRAPPER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=sys.stderr)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
print(json.dumps({"rc": rc, "wall_s": wall, "max_rss_bytes": ru.ru_maxrss * unit,
                  "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time, CPU time and peak resident memory of ``cmd`` run in a fresh process."""
    r = run_command([sys.executable, "-c", _WRAPPER, *cmd], env)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the measured command exited with {res['rc']}:\n{tail}")
    return res


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    setup(args)
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = dict(os.environ)
        run_cmd = [sys.executable, "-m", "compatkit", "run", *default_config()]
        run_cmd += ["--out", str(tmp / "run"), "--quiet"]
        if args.quick:
            fake = write_fake_fashion(tmp / "fashion", train_per_class=120, test_per_class=20)
            env["COMPATKIT_FASHION_MNIST"] = str(fake)
            for s in small_run_sets(20, tiny=True):
                run_cmd += ["--set", s]
        if args.threads:
            run_cmd += ["--set", f"num_workers_threads={args.threads}"]
        figures["import"] = measure(
            [sys.executable, "-c", "import torch, compatkit.protocol.experiment, compatkit.report"],
            env,
        )
        figures["run"] = measure(run_cmd, env)
        meta = json.loads((tmp / "run" / "metrics.json").read_text())["_meta"]
        figures["run"]["eval_s"] = meta.get("eval_seconds")
        figures["run"]["tasks"] = meta.get("num_tasks")
        figures["run"]["methods"] = meta.get("methods")

    mib = 2**20
    run, imp = figures["run"], figures["import"]
    lines = [
        "Peak resident memory (max RSS of the process, from `getrusage(RUSAGE_CHILDREN)` in a "
        "wrapper process whose only child is the measured one) and wall time.",
        "",
        md_table(
            ["process", "peak memory", "wall time", "CPU time (user + sys)"],
            [
                [
                    "`python -c 'import torch, compatkit...'`",
                    f"{imp['max_rss_bytes'] / mib:,.0f} MiB",
                    f"{imp['wall_s']:.1f} s",
                    f"{imp['cpu_s']:.1f} s",
                ],
                [
                    "`python -m compatkit run --quiet`"
                    + (" (reduced, synthetic data" if args.quick else " (default configuration")
                    + (f", {args.threads} torch thread(s))" if args.threads else ")"),
                    f"{run['max_rss_bytes'] / mib:,.0f} MiB",
                    f"{run['wall_s']:.0f} s ({run['wall_s'] / 60:.1f} min)",
                    f"{run['cpu_s']:.0f} s",
                ],
            ],
        ),
        "",
        f"The run: methods {run['methods']}, {run['tasks']} tasks each, providers trained from "
        f"scratch (fresh run directory), evaluation {run['eval_s']} s of it. It needs "
        f"{(run['max_rss_bytes'] - imp['max_rss_bytes']) / mib:,.0f} MiB above what importing "
        f"torch and compatkit costs ({run['max_rss_bytes'] / imp['max_rss_bytes']:.2f}x).",
    ]
    if args.quick:
        lines += ["", "(--quick: reduced run on synthetic files; these figures measure nothing.)"]
    finish(NAME, TITLE, __file__, argv, "\n".join(lines), "cpu", results=args.results)
    return figures


if __name__ == "__main__":
    main()
