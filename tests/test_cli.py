"""The command line's one rule for how a command ends (``compatkit.cli``): a user error is one
line and exit 2, anything else is a bug (exit 1, traceback only under --debug), a closed pipe
is quiet, Ctrl-C is 130."""

from __future__ import annotations

import subprocess
import sys

import pytest

import compatkit.commands.theory as theory_cmd
from compatkit import cli
from compatkit.errors import CompatkitError

from .commands.cli import run_cli


def _one_line_error(r, command: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"compatkit {command}: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_user_errors_are_one_line_with_exit_2(tmp_path, fake_fashion):
    """Through a real process: the exit status and stderr a shell sees."""
    for argv, command, named in (
        (["eval", str(tmp_path / "no-run")], "eval", "no-run"),
        (["run", "--set", "train.lr=fast"], "run", "train.lr"),
    ):
        r = run_cli(argv, fake_fashion, check=False)
        assert r.returncode == 2, (argv, r.stderr)
        assert named in _one_line_error(r, command), (argv, r.stderr)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "{tmp}/missing.yaml"], "missing.yaml"),
        (["run", "--out", "{tmp}/x", "--resume"], "holds no run"),
        (["run", "--set", "seeds"], "KEY=VALUE"),
        (["analyze", "{tmp}", "--pairs", "0"], "--pairs"),
        (["theory", "--K", "1"], "K"),
        (["report", "{tmp}/nope"], "nope"),
        (["metrics", "{tmp}/nope.txt"], "nope.txt"),
        (["configs", "show", "nope"], "nope"),
        (["pretrain", "{tmp}/missing.yaml"], "missing.yaml"),
    ],
)
def test_each_command_refuses_in_one_line(argv, named, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"compatkit {argv[0]}: error: "), err
    assert named in err


def _boom(args):
    raise RuntimeError("the unexpected happened")


def test_internal_error_is_one_line_exit_1_and_a_traceback_under_debug(monkeypatch, capsys):
    monkeypatch.setattr(theory_cmd, "main", _boom)
    assert cli.main(["theory"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error" in err and "RuntimeError: the unexpected happened" in err
    assert "--debug" in err
    for argv in (["--debug", "theory"], ["theory", "--debug"]):  # global or after the command
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "the unexpected happened" in err


def test_every_compatkit_error_is_a_user_error(monkeypatch, capsys):
    """Structural: any subclass, even one defined after the CLI was written, exits 2."""

    class BrandNewError(CompatkitError):
        pass

    def raise_new(args):
        raise BrandNewError("a brand-new check refused this value")

    monkeypatch.setattr(theory_cmd, "main", raise_new)
    assert cli.main(["theory"]) == 2
    err = capsys.readouterr().err
    assert err == "compatkit theory: error: a brand-new check refused this value\n"


def test_ctrl_c_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(theory_cmd, "main", interrupted)
    assert cli.main(["theory"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_debug_is_accepted_by_every_command():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subs) == set(cli.COMMANDS)
    for name, sp in subs.items():
        assert "--debug" in sp._option_string_actions, name
    assert parser.parse_args(["--debug", "configs"]).debug is True
    assert parser.parse_args(["configs", "--debug"]).debug is True
    assert parser.parse_args(["configs"]).debug is False


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`compatkit metrics big.txt | head -1`: far more than a pipe buffer of output."""
    big = tmp_path / "big.txt"
    t = 200
    big.write_text("\n".join(" ".join("50" for _ in range(i + 1)) for i in range(t)))
    p = subprocess.Popen(
        [sys.executable, "-m", "compatkit", "metrics", str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout.readline()
    p.stdout.close()  # the reader stops, as `head -1` does
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) == 141, err
    assert err == ""


@pytest.mark.parametrize("argv", [["configs"], ["configs", "show", "fashion"]])
def test_a_normal_command_exits_0(argv, capsys):
    assert cli.main(argv) == 0
    assert capsys.readouterr().out
