"""Backfill policies: the order in which a gallery's items are re-embedded by a new model.

Each policy gives a priority order over the items not yet embedded by NEW:

- ``random``: one seeded permutation of all items (the items already embedded
  by NEW are skipped in it); the baseline every other order must beat.
- ``class``: whole classes, the classes that moved most first. Movement of a
  class = 1 - the mean cosine between the stored vector and the NEW vector of
  up to ``CLASS_SAMPLE`` of its items (a seeded sample, embedded by NEW while
  planning): the classes whose features the update changed most are the ones
  whose old vectors stop matching new queries. Inside a class a seeded random
  order, so a class cut by the fraction is a random subset of it.
- ``uncertainty``: items whose stored vector is least confidently assigned to
  its own class: the signed margin cos(own class template) - max cos(other
  class templates), templates being the class means of the stored vectors
  (the paper's 1:N templates). Smallest margin first, so items already closer
  to another class's template (negative margin) go first, then the correctly
  placed items with the smallest lead over the runner-up.

``class`` and ``uncertainty`` need class labels. Ties in any order go to the
lower item position. The stored vectors come from a :class:`VectorSource`: the
gallery's engine (a scan for the templates, a fetch for samples) or an array in
memory (the curve).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .ledger import POLICIES

__all__ = ["CLASS_SAMPLE", "POLICIES", "VectorSource", "class_drift", "margins", "priority"]

CLASS_SAMPLE = 32
"""Items per class embedded by NEW to measure how far the class moved (cost: 32 x classes
images, against the whole gallery for the backfill itself)."""
BLOCK_ROWS = 65536
"""Items whose vectors are held at once by the template passes (256 MiB at d = 1023)."""


@dataclass
class VectorSource:
    """The current vectors of a gallery: ``fetch(positions)`` in that order, and ``blocks()``
    yielding ``(positions, vectors)`` over every item once."""

    fetch: Callable[[np.ndarray], np.ndarray]
    blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]

    @classmethod
    def of_array(cls, x: np.ndarray, rows: int = BLOCK_ROWS) -> VectorSource:
        def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for a in range(0, x.shape[0], rows):
                p = np.arange(a, min(a + rows, x.shape[0]))
                yield p, x[p]

        return cls(lambda p: x[p], blocks)


def margins(stored: VectorSource, labels: np.ndarray) -> np.ndarray:
    """Per item, cos(own class template) - max cos(other class templates) (float64).

    Templates: the normalised mean of each class's unit vectors, as
    :func:`compatkit.retrieval.class_templates`. Two passes over the gallery, a block at a
    time. A gallery of one class has no runner-up: margin +inf.
    """
    n = labels.size
    classes = int(labels.max()) + 1
    sums = None
    for p, v in stored.blocks():
        v = F.normalize(torch.from_numpy(v).double(), dim=1)
        if sums is None:
            sums = torch.zeros(classes, v.shape[1], dtype=torch.float64)
        sums.index_add_(0, torch.from_numpy(labels[p]), v)
    present = torch.from_numpy(np.bincount(labels, minlength=classes) > 0)
    templates = F.normalize(sums, dim=1)
    out = np.full(n, np.nan)
    for p, v in stored.blocks():
        s = F.normalize(torch.from_numpy(v).double(), dim=1) @ templates.t()
        s[:, ~present] = -torch.inf
        y = torch.from_numpy(labels[p])
        own = s.gather(1, y[:, None]).squeeze(1)
        s.scatter_(1, y[:, None], -torch.inf)
        out[p] = (own - s.max(dim=1).values).numpy()
    return out


def class_drift(
    stored: VectorSource,
    new: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    eligible: np.ndarray,
    seed: int,
    sample: int = CLASS_SAMPLE,
) -> dict[int, float]:
    """Per class with eligible items: 1 - mean cos(stored vector, NEW vector) over a seeded
    sample of up to ``sample`` of its eligible items."""
    rng = np.random.default_rng([seed, 1])
    picks = []
    for c in np.unique(labels[eligible]):
        mine = eligible[labels[eligible] == c]
        picks.append(np.sort(rng.choice(mine, size=min(sample, mine.size), replace=False)))
    pos = np.concatenate(picks)
    cos = (
        (
            F.normalize(torch.from_numpy(stored.fetch(pos)).double(), dim=1)
            * F.normalize(torch.from_numpy(new(pos)).double(), dim=1)
        )
        .sum(dim=1)
        .numpy()
    )
    drift: dict[int, float] = {}
    for c in np.unique(labels[pos]):
        drift[int(c)] = float(1.0 - cos[labels[pos] == c].mean())
    return drift


def priority(
    policy: str,
    eligible: np.ndarray,
    seed: int,
    count: int,
    labels: np.ndarray | None = None,
    stored: VectorSource | None = None,
    new: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, dict]:
    """The eligible item positions in the policy's order, and what decided it (JSON-able).

    ``count``: items in the gallery; ``stored``: the gallery's current vectors (uncertainty,
    class); ``new``: NEW's vectors of a few items (class). The random order is one seeded
    permutation of all ``count`` items, restricted to the eligible ones: backfilling to 20 %
    and then to 40 % picks the same items as backfilling to 40 % at once.
    """
    eligible = np.sort(np.asarray(eligible, dtype=np.int64))
    if policy == "random":
        perm = np.random.default_rng([seed, 0]).permutation(count)
        return perm[np.isin(perm, eligible)], {}
    if policy not in POLICIES:
        raise InputError(f"--policy {policy!r}: use one of {list(POLICIES)}")
    if labels is None:
        raise InputError(f"--policy {policy}: the gallery has no class labels; use --policy random")
    if eligible.size == 0:
        return eligible, {}
    if policy == "uncertainty":
        m = margins(stored, labels)[eligible]
        order = np.lexsort((eligible, m))  # margin ascending, then position
        return eligible[order], {"margin_quantiles": _quantiles(m)}
    drift = class_drift(stored, new, labels, eligible, seed)
    ranked = sorted(drift, key=lambda c: (-drift[c], c))
    rng = np.random.default_rng([seed, 2])
    parts = []
    for c in ranked:
        mine = eligible[labels[eligible] == c]
        parts.append(mine[rng.permutation(mine.size)])
    return np.concatenate(parts), {
        "class_order": ranked,
        "drift": {str(c): drift[c] for c in ranked},
    }


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {k: float(v) for k, v in zip(("min", "p10", "median", "p90", "max"), q, strict=True)}
