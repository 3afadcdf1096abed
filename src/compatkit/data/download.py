"""Fetching dataset files: checksum-verified, atomic.

A file is streamed into a temporary file in the destination folder, its MD5 is
computed on the way, and only a file with the published checksum is renamed
into place (``os.replace`` is atomic on one file system). An interrupted or
tampered download therefore never leaves a file under the final name that a
later run would trust.

``$COMPATKIT_DOWNLOAD_MIRROR`` replaces the official location of every file
with a base URL of your own (an institutional mirror, or a ``file://``
folder): the file name is appended to it, and the checksum is still the
published one, so a mirror cannot serve other bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError

__all__ = [
    "MIRROR_ENV",
    "ChecksumError",
    "DownloadError",
    "download_file",
    "file_md5",
    "resolve_url",
]

_CHUNK = 1 << 20  # bytes read per step: 1 MiB keeps memory flat for 160 MB archives

MIRROR_ENV = "COMPATKIT_DOWNLOAD_MIRROR"
"""Environment variable: base URL that replaces the official download location."""


class ChecksumError(DataError):
    """A downloaded file's MD5 differs from the published one."""


class DownloadError(DataError):
    """A file could not be fetched (no network, unknown host, HTTP error, disk full...);
    the message gives the URL and the reason in one line."""


def resolve_url(url: str) -> str:
    """``url``, or its file name under ``$COMPATKIT_DOWNLOAD_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}"


def _reason(e: BaseException) -> str:
    """The cause of a failed fetch in a few words (URLError wraps the socket's error)."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        r = e.reason
        return r.strerror or str(r) if isinstance(r, OSError) else str(r)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: str | os.PathLike[str], md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` if the content's MD5 is ``md5``; refuse it otherwise.

    ``timeout`` is in seconds per network operation. ``$COMPATKIT_DOWNLOAD_MIRROR``
    replaces the location (see the module docstring). Raises :class:`ChecksumError`
    on a checksum mismatch and :class:`DownloadError` when the file cannot be fetched or
    written; in both cases nothing is written under ``dest``.
    """
    url = resolve_url(url)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DownloadError(f"cannot write to {dest.parent} ({_reason(e)})") from None
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, http.client.HTTPException, ValueError) as e:
            # OSError covers URLError, timeouts, refused connections and a full disk;
            # ValueError a malformed URL (e.g. a mirror without a scheme).
            raise DownloadError(f"{url}: {_reason(e)}") from None
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
