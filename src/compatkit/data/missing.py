"""The one error of a dataset that is not where compatkit looked, with its remedies.

A loader knows what it searched and why a download failed; only the caller knows which
config key named the data source. The error therefore keeps its parts, and
:meth:`DatasetNotFoundError.for_key` renders the same facts with the remedies spelled as
command-line words (``--set local.data.root=DIR``) once the key is known
(``compatkit.protocol.plan`` does this).
"""

from __future__ import annotations

from ..errors import DataError

__all__ = ["DatasetNotFoundError"]


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset's files were not found (and, when asked for, could not be downloaded).

    Also a ``FileNotFoundError``: what a caller catching missing files expects.
    """

    def __init__(
        self,
        what: str,
        searched: str,
        *,
        env: str,
        holding: str,
        failure: str | None = None,
        apt: str | None = None,
        download: bool = False,
        how: str | None = None,
        key: str | None = None,
    ) -> None:
        self.what, self.searched, self.env, self.holding = what, searched, env, holding
        self.failure, self.apt, self.download, self.how, self.key = (
            failure,
            apt,
            download,
            how,
            key,
        )
        super().__init__(self._render())

    def for_key(self, key: str) -> DatasetNotFoundError:
        """The same error, its remedies naming the config key ``key`` (e.g. ``local.data``)."""
        return DatasetNotFoundError(
            self.what,
            self.searched,
            env=self.env,
            holding=self.holding,
            failure=self.failure,
            apt=self.apt,
            download=self.download,
            how=self.how,
            key=key,
        )

    def _render(self) -> str:
        k = self.key
        msg = f"{k}: " if k else ""
        msg += f"{self.what} not found (searched {self.searched})"
        if self.failure:
            msg += f"; the download failed: {self.failure}"
        remedies = []
        if self.apt:
            remedies.append(f"`apt-get install {self.apt}`")
        if self.how:
            remedies.append(self.how)
        remedies.append(f"`--set {k}.root=DIR`" if k else "pass root=DIR")
        remedies.append(f"`export {self.env}=DIR`")
        if self.download and not self.failure:
            remedies.append(f"`--set {k}.download=true`" if k else "pass download=True")
        return f"{msg}. To get it: {', or '.join(remedies)}, where DIR holds {self.holding}"

    def __reduce__(self):  # keyword-only arguments: pickle (multiprocessing) needs this
        return (_rebuild, ({k: getattr(self, k) for k in _FIELDS},))


_FIELDS = ("what", "searched", "env", "holding", "failure", "apt", "download", "how", "key")


def _rebuild(state: dict) -> DatasetNotFoundError:
    rest = {k: v for k, v in state.items() if k not in ("what", "searched")}
    return DatasetNotFoundError(state["what"], state["searched"], **rest)
