"""The d-Simplex fixed classifier and the class-to-vertex contract.

Paper: Biondi et al., "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements", CVPR 2024,
Sec. 3 (the d-Simplex fixed classifier W of Theorem 1); construction first
given in Pernici et al., "Regular Polytope Networks", TNNLS 2021.

The K vertices of a regular simplex centred at the origin of R^(K-1) are the
classifier weights. They never move, so a feature trained towards vertex v by
one model is still "at" v for any later model that keeps the same assignment:
this is what makes the representation stationary and therefore compatible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["ClassMap", "simplex_vertices"]


def simplex_vertices(num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the ``(K, K-1)`` matrix of the K unit vertices of a regular simplex.

    Construction (docs/method.md §2): the K-1 standard basis vectors of R^(K-1)
    plus the point whose coordinates all equal (1 - sqrt(K)) / (K - 1); these K
    points are equidistant, so subtracting their centroid and normalising each
    row gives unit vectors with pairwise cosine exactly -1/(K-1) summing to
    zero. Built in float64 on the CPU and cast afterwards, so the matrix is
    deterministic and identical on every device.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"simplex needs an integer number of classes K >= 2, got {num_classes!r}")
    k = num_classes
    d = k - 1
    pts = torch.zeros(k, d, dtype=torch.float64)
    pts[:d] = torch.eye(d, dtype=torch.float64)
    pts[d] = (1.0 - math.sqrt(k)) / d
    pts = pts - pts.mean(dim=0, keepdim=True)
    pts = pts / pts.norm(dim=1, keepdim=True)
    return pts.to(dtype)


@dataclass
class ClassMap:
    """Which head row (simplex vertex, or learnable-classifier row) each class uses.

    Two label spaces share one head and, by default, never collide:

    - ``local``: the classes the model is fine-tuned on task after task. With a
      fixed head of K rows they are written "from the bottom": class y uses row
      K-1-y (the reference code's convention).
    - ``provider``: the classes of a model pre-trained elsewhere, written "from
      the top": class p uses row p.

    A learnable head has no fixed size; there rows are handed out in order of
    arrival, which is what a growing classifier does. With ``keep_provider_rows``
    a local class that is also a provider class shares the provider's row. The map is part of a
    model's contract: it is saved in every checkpoint and two models can only be
    compared when their shared classes sit on the same rows.

    ``names`` optionally gives local classes their names (``compatkit train``
    sets them from the image folders): a class is then identified by its name
    across model versions, and its label is a stable id that a successor keeps.
    A map without names (every checkpoint of the paper's protocol) stores no ``names``
    field, so its serialised form (and a checkpoint's digest) does not depend on the option.
    """

    num_rows: int | None
    """K for a fixed head; None for a growing (learnable) head."""
    local: dict[int, int] = field(default_factory=dict)
    provider: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    """Local label -> class name (empty: the classes are known by label only)."""

    def _used(self) -> set[int]:
        return set(self.local.values()) | set(self.provider.values())

    def _check_room(self, n_new: int) -> None:
        if self.num_rows is not None and len(self._used()) + n_new > self.num_rows:
            raise ValueError(
                f"cannot map {n_new} more classes: {len(self._used())} of K={self.num_rows} "
                f"rows are already used (local {len(self.local)}, provider {len(self.provider)}); "
                "raise K (head.num_classes) or use fewer classes"
            )

    def _next_free_row(self) -> int:
        used = self._used()
        return max(used) + 1 if used else 0

    def add_local(self, classes: Iterable[int], keep_provider_rows: bool = False) -> list[int]:
        """Assign rows to new local classes (bottom-up on a fixed head); return their rows.

        ``keep_provider_rows``: a local class this map already holds as a provider class
        takes the provider's row (its vertex, on a fixed head) instead of a new one, so the
        class keeps one row for the life of the scenario.
        """
        new = [int(c) for c in classes if int(c) not in self.local]
        shared = [c for c in new if keep_provider_rows and c in self.provider]
        self._check_room(len(new) - len(shared))
        rows = []
        for c in new:
            if c < 0:
                raise ValueError(f"class labels must be >= 0, got {c}")
            if c in shared:
                self.local[c] = self.provider[c]
                rows.append(self.provider[c])
                continue
            if self.num_rows is not None:
                row = self.num_rows - 1 - c
                if row < 0:
                    raise ValueError(f"local class {c} does not fit a head of K={self.num_rows}")
            else:
                row = self._next_free_row()
            if row in self._used():
                raise ValueError(
                    f"local class {c} would take row {row}, already used by another class; "
                    "provider and local label spaces collide (raise K)"
                )
            self.local[c] = row
            rows.append(row)
        return rows

    def add_provider(self, classes: Iterable[int]) -> list[int]:
        """Assign rows to provider classes (top-down on a fixed head); return their rows."""
        new = [int(c) for c in classes if int(c) not in self.provider]
        self._check_room(len(new))
        rows = []
        for c in new:
            if c < 0:
                raise ValueError(f"class labels must be >= 0, got {c}")
            row = c if self.num_rows is not None else self._next_free_row()
            if row in self._used():
                raise ValueError(
                    f"provider class {c} would take row {row}, already used by another class; "
                    "provider and local label spaces collide (raise K)"
                )
            self.provider[c] = row
            rows.append(row)
        return rows

    def lookup(self, space: str) -> dict[int, int]:
        if space not in ("local", "provider"):
            raise ValueError(f"label space must be 'local' or 'provider', got {space!r}")
        return self.local if space == "local" else self.provider

    def rows(self, labels: torch.Tensor, space: str = "local") -> torch.Tensor:
        """Map a tensor of class labels to head rows; unknown labels raise."""
        table = self.lookup(space)
        if not table:
            raise KeyError(f"no {space} classes are mapped yet")
        size = max(max(table), int(labels.max().item()) if labels.numel() else 0) + 1
        lut = torch.full((size,), -1, dtype=torch.long)
        for c, r in table.items():
            lut[c] = r
        out = lut.to(labels.device)[labels.long()]
        if (out < 0).any():
            missing = sorted(set(labels[out < 0].tolist()))
            raise KeyError(f"{space} classes {missing} have no row in this model's head")
        return out

    def set_names(self, names: Mapping[int, str]) -> None:
        """Name local classes; each must be mapped, and a name may belong to one class only."""
        merged = {**self.names, **{int(k): str(v) for k, v in names.items()}}
        unmapped = sorted(set(merged) - set(self.local))
        if unmapped:
            raise ValueError(f"cannot name local classes {unmapped}: they have no row")
        seen: dict[str, int] = {}
        for label, name in sorted(merged.items()):
            if not name:
                raise ValueError(f"local class {label} has an empty name")
            if name in seen:
                raise ValueError(f"class name {name!r} is given to labels {seen[name]} and {label}")
            seen[name] = label
        self.names = merged

    def used_rows(self) -> int:
        """Number of rows a learnable head needs (one past the highest used row)."""
        used = self._used()
        return max(used) + 1 if used else 0

    def to_dict(self) -> dict:
        out = {
            "num_rows": self.num_rows,
            "local": {str(k): v for k, v in sorted(self.local.items())},
            "provider": {str(k): v for k, v in sorted(self.provider.items())},
        }
        if self.names:  # absent when empty: older contracts (and their digests) stay as they were
            out["names"] = {str(k): v for k, v in sorted(self.names.items())}
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassMap:
        m = cls(
            num_rows=d["num_rows"],
            local={int(k): int(v) for k, v in d.get("local", {}).items()},
            provider={int(k): int(v) for k, v in d.get("provider", {}).items()},
        )
        if d.get("names"):
            m.set_names(d["names"])
        return m

    def copy(self) -> ClassMap:
        return ClassMap(self.num_rows, dict(self.local), dict(self.provider), dict(self.names))
