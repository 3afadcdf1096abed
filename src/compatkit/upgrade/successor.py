"""What a model trained by ``compatkit train`` is made of: its classes' ids, its method and
head, and a successor built from its old model (the contract kept, new classes on free rows).
The rules and their reasons are in :mod:`compatkit.upgrade.train`."""

from __future__ import annotations

import copy

import torch

from ..errors import ConfigError
from ..methods import METHODS
from ..model import CompatModel, ModelSpec, build_model
from .train_options import CE_METHOD, TrainOptions

__all__ = ["SUCCESSOR_METHOD", "build_successor", "check_room", "method_for", "plan_classes"]


def plan_classes(data_classes: list[str], old_names: dict[int, str] | None) -> dict[int, str]:
    """Class id -> name for a model trained on ``data_classes`` (after ``old_names``, if any).

    Ids of the old model's classes are kept; the data's new classes follow in folder order.
    """
    ids = dict(old_names or {})
    known = set(ids.values())
    nxt = max(ids) + 1 if ids else 0
    for name in data_classes:
        if name not in known:
            ids[nxt] = name
            known.add(name)
            nxt += 1
    return ids


SUCCESSOR_METHOD = {"simplex": "hoc", "etf": "etf-hoc", "learnable": "er"}
"""Head kind -> the default method of a successor with that head."""


def method_for(opts: TrainOptions, successor: bool) -> tuple[str, str]:
    """``(method name, head kind)``: a first model is always trained with cross-entropy
    through the head of ``--head`` or of ``--method`` (a compatibility term needs an old model)."""
    if successor:
        if opts.method is not None:
            return opts.method, METHODS[opts.method].head
        head = opts.head or "simplex"
        return SUCCESSOR_METHOD[head], head
    head = opts.head or (METHODS[opts.method].head if opts.method else "simplex")
    return CE_METHOD[head], head


def check_room(k: int, ids: dict[int, str], old_ids: set[int], what: str) -> None:
    if max(ids) + 1 <= k:
        return
    new = [ids[i] for i in sorted(ids) if i not in old_ids]
    need = max(ids) + 1
    if old_ids:
        raise ConfigError(
            f"K={k} vertices cannot hold {need} classes ({len(old_ids)} the old model knows + "
            f"{len(new)} new: {', '.join(new[:5])}{', ...' if len(new) > 5 else ''}); a "
            f"successor keeps K, so train a new lineage with --num-classes >= {need} (and "
            f"re-embed the gallery), or leave classes out of {what}"
        )
    raise ConfigError(
        f"K={k} vertices cannot hold the {need} classes of {what}; pass --num-classes >= {need}"
    )


def build_successor(
    old: CompatModel, head: str, backbone: str, ids: dict[int, str], init: str
) -> CompatModel:
    """The successor model: OLD's contract kept, new classes on free rows, weights per ``init``."""
    o = old.spec
    same_head = head == o.head
    if init == "old" and backbone != o.backbone:
        raise ConfigError(
            f"backbone: --init old needs the old model's backbone ({o.backbone}); pass "
            f"--init scratch to train a {backbone} successor"
        )
    if not same_head and head != "learnable" and o.head != "learnable":
        raise ConfigError(
            f"head: the old model has a fixed {o.head} head and the method needs a fixed {head} "
            "head; their vertices differ, so no gallery can be shared (pick a method with the "
            f"{o.head} head or a learnable one)"
        )
    if same_head and init == "old":
        model = copy.deepcopy(old)
    else:
        k = o.num_classes if head != "learnable" else len(ids)
        spec = ModelSpec(backbone, o.in_channels, o.feat_dim, head, k, o.etf_seed, o.junction)
        model = build_model(spec, old.class_map.copy() if same_head else None)
        if init == "old":
            model.backbone.load_state_dict(old.backbone.state_dict())
            if old.junction is not None:
                model.junction.load_state_dict(old.junction.state_dict())
    model.add_classes(sorted(ids), "local")
    model.class_map.set_names(ids)
    if not same_head and head == "learnable" and init == "old":
        with torch.no_grad():  # each known class starts from the old head's row of it
            for c in old.class_map.local:
                new_row = model.class_map.local[c]
                model.head.w[new_row] = old.head.weight[old.class_map.local[c]].to(model.head.w)
    return model
