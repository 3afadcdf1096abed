"""Checks of a gallery kept in a local folder, before an engine is let near it.

An embedded engine trusts its files. compatkit writes only folders and regular files, so
anything else inside a gallery's folder (a symbolic link, which could point at another
valid file; a FIFO, which would hang a reader; a device) was put there by someone else and
is refused, naming it, before any engine opens the folder. The folder may change while it
is checked (another process committing a backfill chunk): a file that vanishes between the
listing and its check was a writer's temporary file and is passed over.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...errors import DataError

__all__ = ["check_tree", "is_remote"]


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store or a server rather than a local path."""
    return "://" in str(uri)


def check_tree(root: Path, what: str) -> None:
    """Refuse ``root`` unless it is a real folder holding only folders and regular files."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise DataError(f"index {root}: no such {what}") from None
    if stat.S_ISLNK(st.st_mode):
        raise DataError(f"index {root}: a symbolic link, not the {what} compatkit wrote")
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"index {root}: not a {what} (not a folder)")
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(folder) / name
            try:
                mode = os.lstat(p).st_mode
            except FileNotFoundError:  # a writer in another process renamed its temporary file
                continue
            if stat.S_ISLNK(mode):
                raise DataError(
                    f"index {root}: {p.relative_to(root)} is a symbolic link; compatkit never "
                    "writes one (the gallery was tampered with)"
                )
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise DataError(
                    f"index {root}: {p.relative_to(root)} is not a regular file (a FIFO, socket "
                    "or device); compatkit never writes one"
                )
