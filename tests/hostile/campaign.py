"""Hostile-input campaign: mutated configs and broken files fed to every command that reads them.

Usage (from the repository root, with compatkit importable)::

    python -m tests.hostile.campaign                  # 120 mutated configs + every hostile file
    python -m tests.hostile.campaign --configs 200 --seed 3
    python -m tests.hostile.campaign --quick          # a seeded subset (what the test suite runs)
    python -m tests.hostile.campaign --subprocess     # one `python -m compatkit` per case

Each case is one command line (``compatkit run CONFIG``, ``compatkit eval RUN`` ...) on one
mutated config or one broken or hostile file, and ends in one of three ways:

- **refused**: exit status 2 and exactly one line on standard error, ``compatkit CMD: error:
  ...`` (the CLI's rule for a user's mistake);
- **ran**: exit status 0 (the input was acceptable: a README-style matrix, a config whose
  mutation is still valid), or still training at the per-case time limit (a valid config that
  asks for a long run);
- **other**: anything else (a traceback, an internal error, a warning or second line on
  standard error, a crash). The campaign fails when there is any; each is printed with its
  command and the tail of its standard error.

Speed: by default the parent imports compatkit once and forks a child per case that calls
``compatkit.cli.main`` with its own standard output and error files, working directory and
environment, exactly what ``python -m compatkit`` does after its imports. ``--subprocess``
starts a fresh interpreter per case instead (slower, for a check of the real entry point).

Everything is generated from ``--seed`` into a temporary folder: a tiny dataset in the exact
Fashion-MNIST format (the test suite's), one finished tiny run whose checkpoints are the
material for the broken ones, and the mutated files. Nothing outside that folder is read or
written, and no network is used (downloads point at a ``file://`` folder that does not exist).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: children are forked from here

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "e2e" / "tiny.yaml"
TIME_LIMIT = 90.0
"""Seconds per case: a valid config trains the tiny scenario in about 10 s; one that asks for
a long run (a mutated epoch count) is stopped here and counted as ran."""


# --------------------------------------------------------------------------- running a case


@dataclass
class Case:
    name: str
    kind: str
    """config, checkpoint, memory, cifar, idx, png, matrix, metrics_json, run_config."""
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    expect_ran: bool = False
    """Inputs that are acceptable (e.g. a README-style matrix): refusing them is a failure."""


@dataclass
class Outcome:
    case: Case
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def verdict(self) -> str:
        if self.timed_out:
            return "ran"
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        if self.rc == 0:
            return "ran"
        if (
            self.rc == 2
            and len(lines) == 1
            and lines[0].startswith("compatkit ")
            and ": error: " in lines[0]
        ):
            return "refused"
        return "other"


def _child(argv: list[str], env: dict[str, str], cwd: Path, out: Path, err: Path) -> None:
    """In the forked child: become `python -m compatkit ARGV` and exit with its status."""
    rc = 1
    try:
        os.chdir(cwd)
        os.environ.update(env)
        fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fe = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fo, 1)
        os.dup2(fe, 2)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        from compatkit.cli import main

        rc = int(main(argv) or 0)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()  # what the interpreter prints for an uncaught exception
        rc = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(rc)


def run_case(case: Case, scratch: Path, subprocess_mode: bool, limit: float) -> Outcome:
    work = Path(tempfile.mkdtemp(prefix="case-", dir=scratch))
    out, err = work / "stdout.txt", work / "stderr.txt"
    env = {**case.env, "COMPATKIT_DATA": str(scratch / "no-data"), "NO_COLOR": "1"}
    t0 = time.perf_counter()
    timed_out = False
    if subprocess_mode:
        with open(out, "wb") as fo, open(err, "wb") as fe:
            p = subprocess.Popen(
                [sys.executable, "-m", "compatkit", *case.argv],
                cwd=work,
                env={**os.environ, **env, "PYTHONPATH": _pythonpath()},
                stdout=fo,
                stderr=fe,
                start_new_session=True,
            )
            try:
                rc = p.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc, timed_out = None, True
    else:
        pid = os.fork()
        if pid == 0:
            _child(case.argv, env, work, out, err)
        rc = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() - t0 > limit:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.02)
    o = Outcome(
        case,
        rc,
        out.read_text(errors="replace"),
        err.read_text(errors="replace"),
        time.perf_counter() - t0,
        timed_out,
    )
    shutil.rmtree(work, ignore_errors=True)
    return o


def _pythonpath() -> str:
    src = str(REPO / "src")
    return os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


# --------------------------------------------------------------------------- material


def _import_helpers():
    sys.path.insert(0, str(REPO))
    from tests.conftest import write_fake_fashion

    return write_fake_fashion


def make_base_run(scratch: Path, fashion: Path, subprocess_mode: bool) -> Path:
    """One finished tiny run (its checkpoints and metrics are the material of the files)."""
    base = scratch / "base-run"
    case = Case(
        "base run",
        "setup",
        ["run", str(TINY), "--out", str(base), "--quiet"],
        {"COMPATKIT_FASHION_MNIST": str(fashion)},
    )
    o = run_case(case, scratch, subprocess_mode, 600)
    if o.rc != 0:
        raise SystemExit(f"the base run failed (exit {o.rc}):\n{o.stderr[-3000:]}")
    return base


def _yaml(d: object) -> bytes:
    return yaml.safe_dump(d, sort_keys=False).encode()


# --------------------------------------------------------------------------- mutated configs

_SCALARS: list[object] = [
    None,
    True,
    0,
    -1,
    -1000,
    2**31,
    2**63,
    10**30,
    -(10**30),
    0.5,
    -0.5,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "x" * 5000,
    "cuda:99",
    "../../../etc",
    "a\x00b",
    [],
    [1, 2],
    [[1]],
    {},
    {"a": 1},
    [7, 7],
]


def _paths(d: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict/list (lists indexed)."""
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _get_parent(d: object, path: tuple):
    cur = d
    for p in path[:-1]:
        cur = cur[p]
    return cur


def _mutate_tree(tree: dict, rng: random.Random) -> str:
    """Apply one structural mutation in place; return its description."""
    paths = _paths(tree)
    path = rng.choice(paths)
    parent, last = _get_parent(tree, path), path[-1]
    op = rng.choice(["delete", "scalar", "scalar", "scalar", "wrap", "nest", "unknown", "numeric"])
    where = ".".join(map(str, path))
    if op == "delete":
        if isinstance(parent, list):
            parent.pop(last)
        else:
            del parent[last]
        return f"delete {where}"
    if op == "scalar":
        v = copy.deepcopy(rng.choice(_SCALARS))
        parent[last] = v
        return f"{where} = {str(v)[:30]!s}"
    if op == "wrap":
        parent[last] = rng.choice([[parent[last]], {"value": parent[last]}])
        return f"wrap {where}"
    if op == "nest":  # a section moved under another key
        other = rng.choice(list(tree))
        tree.setdefault("local", {})
        tree[other] = {"nested": copy.deepcopy(tree.get(other))}
        return f"nest {other}"
    if op == "unknown":
        if isinstance(parent, dict):
            parent[f"{last}_typo"] = 1
        else:
            parent.append({"unexpected": True})
        return f"unknown key next to {where}"
    # numeric: push a number far out of range, or make it non-finite
    v = parent[last]
    if isinstance(v, bool) or not isinstance(v, int | float):
        parent[last] = rng.choice([-(2**70), 2**64, float("nan")])
    else:
        parent[last] = rng.choice([-v - 1, v * 10**20, -(10**9), float("inf"), 10**6])
    return f"numeric {where}"


def _text_mutation(text: str, rng: random.Random) -> tuple[bytes, str]:
    """Mutations that only exist as bytes: encodings, duplicate keys, syntax, YAML tricks."""
    lines = text.splitlines()
    op = rng.choice(
        [
            "duplicate_line",
            "latin1",
            "utf16",
            "bom",
            "nul",
            "truncate",
            "tab",
            "unbalanced",
            "python_tag",
            "alias_bomb",
            "deep",
            "random_bytes",
        ]
    )
    if op == "duplicate_line":
        i = rng.randrange(len(lines))
        lines.insert(i + 1, lines[i])
        return "\n".join(lines).encode(), f"duplicate line {i + 1}"
    if op == "latin1":
        return ("# caf\xe9 na\xefve\n" + text).encode("latin-1"), "latin-1 bytes"
    if op == "utf16":
        return text.encode("utf-16"), "UTF-16"
    if op == "bom":
        return b"\xef\xbb\xbf" + text.encode(), "UTF-8 BOM (valid)"
    if op == "nul":
        i = rng.randrange(len(text))
        return (text[:i] + "\x00" + text[i:]).encode(), "NUL byte"
    if op == "truncate":
        return text[: rng.randrange(1, len(text))].encode(), "truncated"
    if op == "tab":
        return text.replace("  ", "\t", 1).encode(), "tab indentation"
    if op == "unbalanced":
        return text.replace("]", "", 1).encode(), "unbalanced bracket"
    if op == "python_tag":
        return (text + "\nhack: !!python/object/apply:os.system ['echo pwned']\n").encode(), "tag"
    if op == "alias_bomb":
        bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
        for k in "bcdefgh":
            prev = chr(ord(k) - 1)
            bomb += f"{k}: &{k} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        return (text + "\nmethod_options: {hoc: {lam: *h}}\n" + bomb).encode(), "alias bomb"
    if op == "deep":
        return (text + "\nmethod_options: " + "[" * 3000 + "]" * 3000 + "\n").encode(), "deep"
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))), "random bytes"


FIXED_CONFIGS: list[tuple[str, str]] = [
    ("empty file", ""),
    ("only a comment", "# nothing\n"),
    ("top-level list", "- 1\n- 2\n"),
    ("top-level scalar", "42\n"),
    ("lr nan", "train: {lr: .nan}\n"),
    ("lr string inf", "train: {lr: inf}\n"),
    ("provider lr -inf", "providers: [{lr: -.inf}]\n"),
    ("hoc lam nan", "method_options: {hoc: {lam: nan}}\n"),
    ("seeds twice", "seeds: [7, 7]\n"),
    ("momentum 5", "train: {momentum: 5}\n"),
    ("pad 40", "train: {pad: 40}\n"),
    ("pad huge", "train: {pad: 1000000000}\n"),
    ("warmup longer", "train: {warmup_epochs: 3}\n"),
    ("device cudaXYZ", "device: cudaXYZ\n"),
    ("device cuda:99", "device: cuda:99\n"),
    ("threads -1", "num_workers_threads: -1\n"),
    ("threads 100000", "num_workers_threads: 100000\n"),
    ("K huge", "model: {num_classes: 100000000}\n"),
    ("int beyond int64", "data_seed: 100000000000000000000000000\n"),
    ("negative per_class", "local: {data: {per_class: -3}}\n"),
    ("empty classes", "local: {data: {classes: []}}\n"),
    ("duplicate key", "train: {epochs: 1}\ntrain: {epochs: 2}\n"),
    ("timm backbone", "model: {backbone: 'timm:resnet18'}\n"),
    ("tv backbone", "providers: [{backbone: 'tv:resnet18'}]\n"),
    ("name with slash", "name: ../../escape\n"),
    ("download, no network", "local: {data: {download: true, root: '@EMPTY@'}}\n"),
]


def config_cases(
    n: int, rng: random.Random, scratch: Path, fashion: Path, commands=("run", "pretrain")
) -> list[Case]:
    base = yaml.safe_load(TINY.read_text())
    folder = scratch / "configs"
    folder.mkdir()
    made: list[tuple[str, bytes]] = []
    empty = scratch / "empty-root"
    empty.mkdir()
    for name, overlay in FIXED_CONFIGS:
        overlay = overlay.replace("@EMPTY@", str(empty))
        if name == "empty file" or name.startswith(("only", "top-level")):
            made.append((name, overlay.encode()))
            continue
        merged = copy.deepcopy(base)
        over = yaml.safe_load(overlay) if "duplicate" not in name else None
        if over is None:  # the duplicate-key file keeps its bytes
            made.append((name, (TINY.read_text() + overlay).encode()))
            continue
        for k, v in over.items():
            if k == "providers":
                merged["providers"][0].update(v[0])
            elif isinstance(v, dict) and isinstance(merged.get(k), dict):
                for k2, v2 in v.items():
                    if isinstance(v2, dict) and isinstance(merged[k].get(k2), dict):
                        merged[k][k2].update(v2)
                    else:
                        merged[k][k2] = v2
            else:
                merged[k] = v
        made.append((name, _yaml(merged)))
    while len(made) < n:
        if rng.random() < 0.25:
            blob, what = _text_mutation(TINY.read_text(), rng)
            made.append((what, blob))
            continue
        tree = copy.deepcopy(base)
        whats = [_mutate_tree(tree, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        made.append(("; ".join(whats), _yaml(tree)))
    cases = []
    env = {
        "COMPATKIT_FASHION_MNIST": str(fashion),
        "COMPATKIT_DOWNLOAD_MIRROR": (scratch / "no-mirror").as_uri(),
    }
    for i, (name, blob) in enumerate(made):
        p = folder / f"config_{i:03d}.yaml"
        p.write_bytes(blob)
        out = scratch / "config-runs" / f"{i:03d}"
        argvs = {
            "run": ["run", str(p), "--out", str(out), "--quiet"],
            "pretrain": ["pretrain", str(p), "--out", str(out / "providers"), "--quiet"],
        }
        cases += [Case(f"config {i}: {name}", "config", argvs[c], env) for c in commands]
    return cases


# --------------------------------------------------------------------------- hostile files


class _Evil:
    """A pickle payload that runs a shell command when unpickled (never unpickled here)."""

    def __reduce__(self):
        return (os.system, ("echo compromised > compromised.txt",))


def _torch_payloads() -> dict[str, Callable[[Path], None]]:
    import torch

    def zip_code(p: Path) -> None:
        torch.save({"state_dict": _Evil()}, p)

    def zip_code_p4(p: Path) -> None:
        torch.save({"state_dict": _Evil()}, p, pickle_protocol=4)

    def legacy_code(p: Path) -> None:
        torch.save({"x": _Evil()}, p, _use_new_zipfile_serialization=False)

    def plain_pickle(p: Path) -> None:
        p.write_bytes(pickle.dumps(_Evil(), protocol=2))

    def plain_state_dict(p: Path) -> None:
        torch.save({"w": torch.zeros(3)}, p)

    return {
        "torch.save code payload": zip_code,
        "torch.save code payload, protocol 4": zip_code_p4,
        "legacy torch.save code payload": legacy_code,
        "plain pickle code payload": plain_pickle,
        "plain state dict": plain_state_dict,
    }


def _tampered(src: Path, p: Path) -> None:
    """One byte flipped inside the first tensor's data (its digest no longer matches)."""
    import zipfile

    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 16)
    # Local file header: 30 bytes, then the name and the extra field, then the data.
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0xFF
    p.write_bytes(bytes(raw))


def _resealed(src: Path, p: Path, change: Callable[[dict], None]) -> None:
    """A checkpoint edited and re-signed: format and digest valid, content wrong."""
    import torch

    from compatkit.checkpoint.format import _digest

    obj = torch.load(src, weights_only=True)
    change(obj)
    obj["sha256"] = _digest(obj, obj["state_dict"])
    torch.save(obj, p)


def _drop_and_add(obj: dict) -> None:
    sd = obj["state_dict"]
    for k in list(sd)[:3]:
        del sd[k]
    sd["extra.weight"] = sd[next(iter(sd))].clone()
    k = next(k for k, v in sd.items() if v.ndim == 2)
    sd[k] = sd[k][:, :-1].clone()


def _other_k(obj: dict) -> None:
    """The same model built for K = 12 (the run has K = 10): a valid file of another run."""
    from compatkit.model import ModelSpec, build_model

    c = dict(obj["contract"])
    spec = ModelSpec.from_dict({**c, "num_classes": 12, "feat_dim": 11})
    m = build_model(spec)
    m.add_classes(sorted(int(k) for k in c["class_map"]["provider"]), "provider")
    m.add_classes(sorted(int(k) for k in c["class_map"]["local"]), "local")
    obj["contract"] = m.contract()
    obj["state_dict"] = {k: v.detach() for k, v in m.state_dict().items()}


def checkpoint_variants(good: Path) -> dict[str, Callable[[Path], None]]:
    raw = good.read_bytes()
    v: dict[str, Callable[[Path], None]] = {
        "truncated checkpoint": lambda p: p.write_bytes(raw[: len(raw) // 3]),
        "random bytes as checkpoint": lambda p: p.write_bytes(os.urandom(4096)),
        "empty checkpoint": lambda p: p.write_bytes(b""),
        "tampered checkpoint (digest)": lambda p: _tampered(good, p),
        "re-signed with missing/unexpected/reshaped weights": lambda p: _resealed(
            good, p, _drop_and_add
        ),
        "re-signed checkpoint of another K": lambda p: _resealed(good, p, _other_k),
        "directory instead of a checkpoint": lambda p: p.mkdir(),
        "an earlier task's checkpoint": lambda p: p.write_bytes(raw),
    }
    v.update(_torch_payloads())
    return v


def _commands() -> set[str]:
    from compatkit.cli import COMMANDS

    return set(COMMANDS)


def _copy_run(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("features", "plots"))
    return dest


def file_cases(scratch: Path, base: Path, fashion: Path) -> list[Case]:
    env = {"COMPATKIT_FASHION_MNIST": str(fashion)}
    files = scratch / "files"
    files.mkdir()
    cases: list[Case] = []
    good = base / "hoc" / "seed_7" / "task_1.pt"
    n = 0

    def run_dir(tag: str) -> Path:
        nonlocal n
        n += 1
        return _copy_run(base, files / f"run-{n:03d}-{tag}")

    # Checkpoints: a task checkpoint of a run (eval, analyze, resume), a provider file named
    # by the config (run, pretrain).
    for name, make in checkpoint_variants(good).items():
        r = run_dir("ckpt")
        for t in ("task_1.pt", "task_2.pt"):
            target = r / "hoc" / "seed_7" / t
            target.unlink()
            make(target)
        cfg = files / f"provider-{n:03d}.yaml"
        bad_provider = files / f"provider-{n:03d}.pt"
        make(bad_provider)
        tiny = yaml.safe_load(TINY.read_text())
        tiny["methods"] = ["hoc"]
        tiny["providers"][0]["checkpoint"] = {"simplex": str(bad_provider)}
        cfg.write_bytes(_yaml(tiny))
        cases += [
            Case(f"{name}: eval", "checkpoint", ["eval", str(r), "--quiet"], env),
            Case(
                f"{name}: analyze",
                "checkpoint",
                ["analyze", str(r), "--no-plots", "--pairs", "50", "--quiet"],
                env,
            ),
            Case(
                f"{name}: run --resume",
                "checkpoint",
                ["run", str(TINY), "--out", str(r), "--resume", "--quiet"],
                env,
            ),
            Case(
                f"{name}: provider checkpoint, run",
                "checkpoint",
                ["run", str(cfg), "--out", str(files / f"prun-{n:03d}"), "--quiet"],
                env,
            ),
            Case(
                f"{name}: provider checkpoint, pretrain",
                "checkpoint",
                ["pretrain", str(cfg), "--out", str(files / f"pp-{n:03d}"), "--quiet"],
                env,
            ),
        ]
        if "convert" in _commands():  # the released-model converter reads torch.save files
            cases += [
                Case(
                    f"{name}: convert --head {head}",
                    "checkpoint",
                    [
                        "convert",
                        str(bad_provider),
                        "--from",
                        "iamcl2r",
                        "--head",
                        head,
                        "--classes",
                        "10",
                        "--out",
                        str(files / f"conv-{n:03d}-{head}.pt"),
                    ],
                    env,
                )
                for head in ("simplex", "learnable")
            ]

    # Rehearsal-memory files, read on resume.
    import torch

    mem_variants = {
        "truncated memory file": lambda p: p.write_bytes(p.read_bytes()[:100]),
        "code payload as memory file": lambda p: torch.save({"images": _Evil()}, p),
        "memory file of the wrong shape": lambda p: torch.save({"per_class": "x"}, p),
    }
    for name, make in mem_variants.items():
        r = run_dir("mem")
        (r / "hoc" / "seed_7" / "task_2.pt").unlink()  # resume restarts at task 2
        make(r / "hoc" / "seed_7" / "memory_1.pt")
        cases.append(
            Case(
                f"{name}: run --resume",
                "memory",
                ["run", str(TINY), "--out", str(r), "--resume", "--quiet"],
                env,
            )
        )

    # The run's own config.yaml and metrics.json (eval, analyze, report).
    run_files = {
        "config.yaml with NaN": ("config.yaml", b"train: {lr: .nan}\n"),
        "config.yaml not UTF-8": ("config.yaml", b"name: caf\xe9\n"),
        "config.yaml with a duplicate key": ("config.yaml", b"seeds: [7]\nseeds: [8]\n"),
        "metrics.json truncated": ("metrics.json", None),
        "metrics.json nested 100000 deep": ("metrics.json", b"[" * 100000 + b"]" * 100000),
        "metrics.json with text in a matrix": (
            "metrics.json",
            json.dumps({"hoc": {"matrix": [["a"]]}}).encode(),
        ),
        "metrics.json not UTF-8": ("metrics.json", b'{"hoc": "\xff"}'),
        "analysis.json nested deep": ("analysis.json", b"{" + b'"a":{' * 5000 + b"}" * 5001),
    }
    for name, (fname, blob) in run_files.items():
        r = run_dir("files")
        target = r / fname
        target.write_bytes(target.read_bytes()[:50] if blob is None else blob)
        cmds = [["report", str(r)]]
        if fname == "config.yaml":
            cmds = [
                ["eval", str(r), "--quiet"],
                ["analyze", str(r), "--no-plots", "--pairs", "50", "--quiet"],
            ]
        elif fname == "metrics.json":
            cmds.append(["analyze", str(r), "--no-plots", "--pairs", "50", "--quiet"])
            cmds.append(["eval", str(r), "--quiet"])  # recomputes it: must run
        for argv in cmds:
            ok = argv[0] == "eval" and fname == "metrics.json"
            cases.append(Case(f"{name}: {argv[0]}", "run_files", argv, env, ok))

    cases += data_cases(files, env)
    cases += matrix_cases(files)
    return cases


def _data_config(tmp: Path, dataset: str, root: Path, **local) -> Path:
    tiny = yaml.safe_load(TINY.read_text())
    tiny["methods"] = ["hoc"]
    tiny["local"]["data"] = {"dataset": dataset, "root": str(root), **local}
    p = tmp / f"data-{dataset}-{root.name}.yaml"
    p.write_bytes(_yaml(tiny))
    return p


def data_cases(files: Path, env: dict[str, str]) -> list[Case]:
    from compatkit.data.idx import write_idx
    from tests.data.formats import write_cifar_batch

    cases: list[Case] = []

    def add(name: str, kind: str, cfg: Path) -> None:
        out = files / f"data-run-{len(cases):03d}"
        cases.append(Case(name, kind, ["run", str(cfg), "--out", str(out), "--quiet"], env))
        cases.append(
            Case(
                name + " (pretrain)",
                kind,
                ["pretrain", str(cfg), "--out", str(out), "--quiet"],
                env,
            )
        )

    # CIFAR-10 folders, one defect each.
    def cifar_folder(tag: str) -> Path:
        d = files / f"cifar-{tag}" / "cifar-10-batches-py"
        d.mkdir(parents=True)
        names = [f"c{i}".encode() for i in range(10)]
        (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
        x = np.zeros((20, 3, 32, 32), np.uint8)
        y = np.arange(20) % 10
        for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            write_cifar_batch(d / b, x, y)
        return d

    d = cifar_folder("code")
    (d / "data_batch_1").write_bytes(pickle.dumps(_Evil(), protocol=2))
    add("malicious CIFAR pickle", "cifar", _data_config(files, "cifar10", d.parent))
    d = cifar_folder("trunc")
    (d / "data_batch_2").write_bytes((d / "data_batch_2").read_bytes()[:500])
    add("truncated CIFAR batch", "cifar", _data_config(files, "cifar10", d.parent))
    d = cifar_folder("labels")
    write_cifar_batch(d / "data_batch_3", np.zeros((2, 3, 32, 32), np.uint8), [0, 99])
    add("CIFAR labels out of range", "cifar", _data_config(files, "cifar10", d.parent))
    arch = files / "cifar-tar" / "cifar-10-python.tar.gz"
    arch.parent.mkdir()
    arch.write_bytes(gzip.compress(b"ustar" + os.urandom(3000))[:1500])
    add("corrupt CIFAR archive", "cifar", _data_config(files, "cifar10", arch.parent))

    # Fashion-MNIST idx files.
    def idx_folder(tag: str) -> Path:
        d = files / f"idx-{tag}"
        d.mkdir()
        for split, n in (("train", 40), ("t10k", 12)):
            write_idx(d / f"{split}-images-idx3-ubyte.gz", np.zeros((n * 6, 28, 28), np.uint8))
            write_idx(
                d / f"{split}-labels-idx1-ubyte.gz", np.repeat(np.arange(6, dtype=np.uint8), n)
            )
        return d

    d = idx_folder("trunc")
    raw = gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    add("truncated idx file", "idx", _data_config(files, "fashion-mnist", d))
    d = idx_folder("magic")
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(8)))
    add("idx file with a bad magic number", "idx", _data_config(files, "fashion-mnist", d))
    d = idx_folder("gzip")
    raw = (d / "train-images-idx3-ubyte.gz").read_bytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes(raw[:-20])
    add("damaged gzip stream", "idx", _data_config(files, "fashion-mnist", d))
    d = idx_folder("dims")
    hdr = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 2**31, 2**31, 2**31)
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(hdr))
    add("idx header claiming 2^93 bytes", "idx", _data_config(files, "fashion-mnist", d))

    # Image folders.
    from PIL import Image

    def png_folder(tag: str) -> Path:
        d = files / f"png-{tag}"
        for c in ("a", "b", "c", "d", "e", "f"):
            (d / c).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(np.full((8, 8), i * 20, np.uint8)).save(d / c / f"{i}.png")
        return d

    png_defects: dict[str, Callable[[Path], None]] = {
        "empty .png": lambda p: p.write_bytes(b""),
        "truncated .png": lambda p: p.write_bytes(p.read_bytes()[:40]),
        "text file named .png": lambda p: p.write_text("not an image"),
        "decompression bomb .png": _bomb_png,
        "image of another size": lambda p: Image.fromarray(np.zeros((9, 8), np.uint8)).save(p),
    }
    for name, make in png_defects.items():
        d = png_folder(name.split()[0].strip("."))
        make(d / "c" / "3.png")
        cfg = _data_config(files, "folder", d, classes=[0, 1, 2, 3], per_class=4)
        add(f"image folder: {name}", "png", cfg)
    return cases


def _bomb_png(p: Path) -> None:
    """A valid 1-bit PNG header claiming 20000 x 20000 pixels, its data a few zlib bytes."""
    w = h = 20000

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    row = b"\x00" + bytes((w + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def matrix_cases(files: Path, forms=((), ("--json",))) -> list[Case]:
    readme = " 1*  89.75\n 2   88.00  90.15\n 3*  90.40  91.85  91.15\n"
    blobs: dict[str, tuple[bytes, bool]] = {
        "deeply nested JSON": (b"[" * 100000 + b"]" * 100000, False),
        "README-style matrix": (readme.encode(), True),
        "matrix with a UTF-8 BOM": (b"\xef\xbb\xbf50\n60 55\n", True),
        "matrix with a header line": (b"query\\gallery 1 2\n1 50\n2 60 55\n", True),
        "matrix with NaN": (b"50\nnan 55\n", False),
        "matrix with 1e999": (b"50\n1e999 55\n", False),
        "matrix with a 400-digit integer": (b"[[50], [1" + b"0" * 400 + b", 55]]", False),
        "matrix not UTF-8": (b"50\n60 \xff\n", False),
        "empty matrix file": (b"", False),
        "binary garbage matrix": (bytes(range(256)) * 4, False),
        "JSON object without a matrix": (b'{"rows": [[1]]}', False),
        "JSON matrix of strings": (b'[["50"]]', False),
        "ragged matrix": (b"50\n60\n70 80 90\n", False),
        "100000 rows of one number": (b"50\n" * 100000, False),
    }
    cases = []
    for i, (name, (blob, ok)) in enumerate(blobs.items()):
        p = files / f"matrix-{i:02d}.txt"
        p.write_bytes(blob)
        for form in forms:
            argv = ["metrics", str(p), *form]
            cases.append(Case(f"{name}: {' '.join(argv[:1] + argv[2:])}", "matrix", argv, {}, ok))
    return cases


# --------------------------------------------------------------------------- main


def campaign(
    n_configs: int, seed: int, subprocess_mode: bool, quick: bool, log=print, limit=TIME_LIMIT
) -> tuple[list[Outcome], Counter]:
    rng = random.Random(seed)
    scratch = Path(tempfile.mkdtemp(prefix="compatkit-hostile-"))
    try:
        write_fake_fashion = _import_helpers()
        fashion = write_fake_fashion(scratch / "fashion")
        (scratch / "no-data").mkdir()
        cases: list[Case] = []
        if not quick:
            cases += config_cases(n_configs, rng, scratch, fashion)
            base = make_base_run(scratch, fashion, subprocess_mode)
            cases += file_cases(scratch, base, fashion)
        else:  # every config through `run` only, every matrix in text form only
            cases += config_cases(n_configs, rng, scratch, fashion, commands=("run",))
            cases += matrix_cases(_mk(scratch / "files"), forms=((),))
        outcomes = []
        for i, case in enumerate(cases):
            o = run_case(case, scratch, subprocess_mode, limit)
            outcomes.append(o)
            v = o.verdict
            if v == "other" or (case.expect_ran and v != "ran"):
                cmd = " ".join(case.argv)
                log(f"[{i + 1}/{len(cases)}] {v.upper()}: {case.name}: compatkit {cmd}")
                log(
                    "    exit "
                    + str(o.rc)
                    + "; stderr: "
                    + o.stderr.strip()[-1500:].replace("\n", "\n    ")
                )
        counts = Counter(o.verdict for o in outcomes)
        counts["unexpected refusals"] = sum(
            1 for o in outcomes if o.case.expect_ran and o.verdict != "ran"
        )
        return outcomes, counts
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=120, help="mutated configs (default 120)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="configs through `run` and matrices through `metrics` only (no base run)",
    )
    ap.add_argument("--subprocess", action="store_true", help="a fresh interpreter per case")
    ap.add_argument("--limit", type=float, default=TIME_LIMIT, help="seconds per case")
    ap.add_argument("--details", type=Path, help="write every case's verdict here (JSON lines)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    outcomes, counts = campaign(a.configs, a.seed, a.subprocess, a.quick, limit=a.limit)
    if a.details:
        with open(a.details, "w") as f:
            for o in outcomes:
                row = {
                    "case": o.case.name,
                    "argv": o.case.argv,
                    "verdict": o.verdict,
                    "exit": o.rc,
                    "seconds": round(o.seconds, 2),
                    "stderr": o.stderr[-2000:],
                }
                f.write(json.dumps(row) + "\n")
    kinds = Counter(o.case.kind for o in outcomes)
    n_files = len({o.case.name.split(":")[0] for o in outcomes if o.case.kind != "config"})
    print(
        f"\n{len(outcomes)} cases ({kinds['config']} config cases from {a.configs} configs, "
        f"{n_files} broken or hostile files) in {time.perf_counter() - t0:.0f}s, seed {a.seed}"
    )
    for kind in sorted(kinds):
        c = Counter(o.verdict for o in outcomes if o.case.kind == kind)
        print(f"  {kind:12s} refused {c['refused']:4d}   ran {c['ran']:4d}   other {c['other']:3d}")
    print(
        f"  {'total':12s} refused {counts['refused']:4d}   ran {counts['ran']:4d}   "
        f"other {counts['other']:3d}   (unexpected refusals {counts['unexpected refusals']})"
    )
    return 1 if counts["other"] or counts["unexpected refusals"] else 0


if __name__ == "__main__":
    sys.exit(main())
