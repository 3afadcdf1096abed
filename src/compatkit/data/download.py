"""Fetching dataset files: checksum-verified, atomic.

A file is streamed into a temporary file in the destination folder, its MD5 is
computed on the way, and only a file with the published checksum is renamed
into place (``os.replace`` is atomic on one file system). An interrupted or
tampered download therefore never leaves a file under the final name that a
later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError

__all__ = ["ChecksumError", "download_file", "file_md5"]

_CHUNK = 1 << 20  # bytes read per step: 1 MiB keeps memory flat for 160 MB archives


class ChecksumError(DataError):
    """A downloaded file's MD5 differs from the published one."""


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: str | os.PathLike[str], md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` if the content's MD5 is ``md5``; refuse it otherwise.

    ``timeout`` is in seconds per network operation. Raises :class:`ChecksumError`
    (nothing is written under ``dest``) on a checksum mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != md5:
            raise ChecksumError(
                f"refusing {url}: its MD5 is {got}, the published one is {md5} "
                f"(corrupted or tampered download; nothing was written to {dest})"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
