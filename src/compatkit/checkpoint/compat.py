"""Whether two models' features can be compared at all, decided from their contracts.

Allowed: any backbone change, and pairs with a learnable head when the dimension matches.
Refused: other feature sizes or input channels, fixed heads (d-Simplex, ETF) of another kind,
K or ETF seed, and between fixed heads a class on another row: the fixed rows are where each
class's features are trained to be, so a class that moved rows is a class whose features
moved (Biondi et al., CVPR 2024, Sec. 3: the vertices never move; compatibility holds while
every class keeps its vertex).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import IncompatibleModels
from ..model import CompatModel
from .format import FIXED_HEADS, read_contract, unwrap_model

__all__ = ["ModelLike", "check_compatible"]


ModelLike = CompatModel | Mapping | str | os.PathLike
"""What :func:`check_compatible` compares: a model, a contract, a checkpoint's metadata dict
(from :func:`read_contract` or :func:`load_checkpoint`), or a checkpoint file."""


def _contract_of(c: Any) -> tuple[Mapping, str | None]:
    """The contract of any :data:`ModelLike`, and the file it came from (for messages)."""
    if isinstance(c, str | os.PathLike):
        return read_contract(c)["contract"], str(c)
    try:
        return unwrap_model(c).contract(), None
    except TypeError:
        pass
    if isinstance(c, Mapping):
        if "contract" in c and isinstance(c["contract"], Mapping):
            return c["contract"], c.get("path") if isinstance(c.get("path"), str) else None
        return c, None
    raise TypeError(
        f"check_compatible compares models, contracts, checkpoint metadata or checkpoint "
        f"paths, got {type(c).__name__}"
    )


def _placements(class_map: Mapping, by_name: bool) -> dict[tuple[str, str | int], int]:
    """Row of each class, keyed by ``(space, class)``; local classes by name when ``by_name``."""
    names = class_map.get("names") or {}
    out: dict[tuple[str, str | int], int] = {}
    for space in ("local", "provider"):
        for cls, row in class_map.get(space, {}).items():
            key = names[str(cls)] if by_name and space == "local" else int(cls)
            out[(space, key)] = int(row)
    return out


def _fully_named(class_map: Mapping) -> bool:
    names = class_map.get("names") or {}
    return bool(names) and set(names) == {str(k) for k in class_map.get("local", {})}


def check_compatible(
    model_a: ModelLike, model_b: ModelLike, names: tuple[str, str] | None = None
) -> None:
    """Raise :class:`IncompatibleModels` when features of the two models cannot be compared.

    Refused: different feature dimensions; different input channels (they
    cannot embed the same images); two fixed heads (simplex/ETF) of different
    kind, K or ETF seed; and, between fixed heads, a class placed on different
    rows, or one row holding different classes, in the two class maps, since
    the fixed rows are where the features of each class are trained to be.
    When both class maps name every local class (``ClassMap.names``), a class
    is identified by its name, otherwise by its label.
    Allowed: any backbone change, and pairs involving a learnable head as
    long as the dimension matches (their rows carry no shared geometry, and
    measuring how such a pair fares is exactly what the ER baseline is for).

    Either argument may be a :class:`~compatkit.model.CompatModel` (also wrapped by DDP or
    ``torch.compile``), its ``contract()``, the metadata dict of :func:`read_contract` or
    :func:`load_checkpoint`, or the path of a checkpoint (read with ``weights_only=True``).
    ``names`` defaults to the file names where there are files, else "model A"/"model B".
    """
    a, file_a = _contract_of(model_a)
    b, file_b = _contract_of(model_b)
    na, nb = names or (file_a or "model A", file_b or "model B")

    def refuse(why: str) -> None:
        raise IncompatibleModels(f"{na} and {nb} are not compatible: {why}")

    for key in ("feat_dim", "in_channels", "head"):
        if key not in a or key not in b:
            refuse(f"contract lacks {key!r}")
    if a["feat_dim"] != b["feat_dim"]:
        refuse(f"feature dimensions differ ({na} {a['feat_dim']}, {nb} {b['feat_dim']})")
    if a["in_channels"] != b["in_channels"]:
        refuse(f"input channels differ ({na} {a['in_channels']}, {nb} {b['in_channels']})")
    if a["head"] not in FIXED_HEADS or b["head"] not in FIXED_HEADS:
        return
    if a["head"] != b["head"]:
        refuse(f"fixed heads of different kinds ({na} {a['head']!r}, {nb} {b['head']!r})")
    if a.get("num_classes") != b.get("num_classes"):
        refuse(
            f"{a['head']} heads with different K ({a.get('num_classes')} vs {b.get('num_classes')})"
        )
    if a["head"] == "etf" and a.get("etf_seed", 0) != b.get("etf_seed", 0):
        refuse(
            f"ETF frames built from different seeds ({a.get('etf_seed', 0)} vs "
            f"{b.get('etf_seed', 0)}), so their rows point in different directions"
        )
    ma, mb = a.get("class_map") or {}, b.get("class_map") or {}
    # Classes named in both maps (checkpoints of `compatkit train`) are the same class when
    # they have the same name, whatever their labels; otherwise labels identify classes.
    by_name = _fully_named(ma) and _fully_named(mb)
    pa, pb = _placements(ma, by_name), _placements(mb, by_name)

    def show(key: tuple[str, str | int]) -> str:
        space, cls = key
        return f"class {cls!r}" if isinstance(cls, str) else f"{space} class {cls}"

    for key in sorted(pa.keys() & pb.keys(), key=lambda k: (k[0], isinstance(k[1], str), k[1])):
        if pa[key] != pb[key]:
            refuse(f"{show(key)} sits on row {pa[key]} in {na} but on row {pb[key]} in {nb}")
    oa, ob = {r: k for k, r in pa.items()}, {r: k for k, r in pb.items()}
    for row in sorted(oa.keys() & ob.keys()):
        if oa[row] != ob[row]:
            refuse(f"row {row} holds {show(oa[row])} in {na} but {show(ob[row])} in {nb}")
