"""Writing a command's result to standard output, so that a closed pipe is not an error.

``compatkit metrics m.txt | head -1`` closes the pipe after one line. Python then raises
``BrokenPipeError`` at the next write, or, if the text sat in the buffer, at interpreter exit
where no handler runs and a traceback-like "Exception ignored" message is printed. Commands
therefore write their result in one call and flush it here; a reader that went away ends the
command quietly with the shell's status for SIGPIPE (141), and standard output is pointed at
``/dev/null`` so that the final flush at exit has nothing left to fail on.
"""

from __future__ import annotations

import os
import sys

__all__ = ["SIGPIPE_STATUS", "emit"]

SIGPIPE_STATUS = 128 + 13
"""What a shell reports for a process killed by SIGPIPE, the usual fate of a writer to a closed
pipe."""


def emit(text: str) -> None:
    """Write ``text`` and a newline to standard output and flush; a closed pipe exits quietly."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout without a file descriptor (a test's StringIO)
            pass
        raise SystemExit(SIGPIPE_STATUS) from None
