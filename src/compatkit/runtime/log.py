"""Progress display and run log: a live bar on a terminal, plain lines in the log file.

Long work shows what it is doing (task, epoch, loss, throughput); the same
events are appended to ``RUN_DIR/log.txt`` so that a run in the background or
in CI leaves a readable trace.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

__all__ = ["RunLog"]


class RunLog:
    """Writes timestamped lines to a log file and to stderr; drives a rich progress bar.

    ``path`` None keeps the lines in memory until :meth:`attach` names the file, so
    that a run can log its checks before it creates its folder (a run refused up
    front leaves nothing behind). ``stream`` is where the live bar draws (stderr).
    """

    _MAX_PENDING = 10_000

    def __init__(
        self,
        path: Path | None,
        quiet: bool = False,
        live: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.path = None
        self.quiet = quiet
        self._fh: TextIO | None = None
        self._pending: list[str] = []
        if path is not None:
            self.attach(path)
        self._stream = stream
        out = stream if stream is not None else sys.stderr
        self.live = out.isatty() if live is None else live
        self._progress = None
        self._task_id = None
        self._t0 = time.perf_counter()

    def attach(self, path: Path) -> None:
        """Start writing to ``path`` (appending), first the lines logged so far."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = path.open("a", encoding="utf-8")
        self._fh.writelines(self._pending)
        self._fh.flush()
        self._pending = []

    def info(self, msg: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self._fh is not None:
            self._fh.write(f"{stamp} {msg}\n")
            self._fh.flush()
        elif len(self._pending) < self._MAX_PENDING:
            self._pending.append(f"{stamp} {msg}\n")
        if not self.quiet:
            if self._progress is not None:
                self._progress.console.print(msg)
            else:
                print(msg, file=sys.stderr, flush=True)

    # --- a bar per training phase (one task or one provider)
    def start(self, label: str, total: int) -> None:
        if not self.live or self.quiet:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        if self._progress is None:
            console = None
            if self._stream is not None:
                from rich.console import Console

                console = Console(file=self._stream, force_terminal=self.live)
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                transient=True,
                console=console,
            )
            self._progress.start()
        self._task_id = self._progress.add_task(label, total=total, stats="")
        self._progress.refresh()  # a phase shorter than the refresh period is still shown

    def advance(self, stats: str = "") -> None:
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, advance=1, stats=stats)

    def finish(self) -> None:
        if self._progress is not None and self._task_id is not None:
            self._progress.refresh()
            self._progress.remove_task(self._task_id)
            self._task_id = None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0
