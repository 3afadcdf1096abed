"""What compatkit keeps with a gallery besides its vectors, checked on every read.

The records live in the gallery's own engine (:meth:`GalleryStore.put_records`), so a
gallery on object storage or in a Milvus cluster carries them along:

- ``gallery``: the description written last by a build (format, dimension, dtype, item
  count, class names, where the images came from); a store without it is an interrupted
  build or not compatkit's;
- ``version/<fingerprint>``: one per model version (fingerprint, contract, class names,
  checkpoint path, when added);
- ``check/<time>-<token>``: one per recorded ``compatkit check`` verdict, appended, never
  rewritten (two recorders cannot lose each other's verdict);
- ``plan``: the plan of an unfinished backfill.

Anyone can edit these with plain lancedb or pymilvus, so nothing read is trusted: every
field is checked for type and range, and for agreement with the vectors (the item count,
the versions the vectors carry, a plan's size against its fraction), before anything is
read from it or written because of it. A damaged value is one DataError line.
"""

from __future__ import annotations

import datetime
import math
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from .. import __version__
from ..errors import DataError, InputError
from .store import GalleryStore

__all__ = [
    "CHECK_FORMAT",
    "GALLERY_FORMAT",
    "PLAN_FORMAT",
    "POLICIES",
    "append_check",
    "check_verdict",
    "gallery_record",
    "read_checks",
    "read_gallery",
    "read_plan",
    "read_versions",
    "utc_now",
    "version_record",
]

GALLERY_FORMAT = "compatkit-gallery"
FORMAT_VERSION = 1
CHECK_FORMAT = "compatkit-check"
PLAN_FORMAT = "compatkit-backfill-plan"
POLICIES = ("random", "class", "uncertainty")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_ITEMS = 10**12
MAX_CHUNK = 10**7
"""Largest backfill chunk: 10M items of 1,023 float32 is 40 GB in one commit."""


def utc_now() -> str:
    """The time of a record, in UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _fail(store: GalleryStore, key: str, why: str) -> DataError:
    return DataError(f"index {store.uri}: record {key!r} {why}; the gallery was damaged or edited")


# ----------------------------------------------------------------------------- the gallery


def gallery_record(
    store: GalleryStore, count: int, classes: list[str] | None, source: Mapping
) -> dict:
    return {
        "format": GALLERY_FORMAT,
        "format_version": FORMAT_VERSION,
        "compatkit_version": __version__,
        "created": utc_now(),
        "dim": store.dim,
        "dtype": store.dtype,
        "count": int(count),
        "classes": classes,
        "source": dict(source),
    }


def read_gallery(store: GalleryStore) -> dict:
    """The ``gallery`` record, checked against the store (dimension, dtype, entity count)."""
    doc = store.get_record("gallery")
    if doc is None:
        raise DataError(
            f"index {store.uri}: no 'gallery' record: an interrupted `compatkit index build` "
            "or a database compatkit did not write; build it again"
        )
    if not isinstance(doc, dict) or doc.get("format") != GALLERY_FORMAT:
        raise _fail(store, "gallery", f"is not a {GALLERY_FORMAT!r} record")
    v = doc.get("format_version")
    if not _int(v, 1, 10**6):
        raise _fail(store, "gallery", f"has an invalid format_version {v!r}")
    if v > FORMAT_VERSION:
        raise DataError(
            f"index {store.uri}: format version {v} is newer than this compatkit "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade compatkit"
        )
    if doc.get("dim") != store.dim or doc.get("dtype") != store.dtype:
        raise _fail(
            store,
            "gallery",
            f"says {doc.get('dim')!r}-d {doc.get('dtype')!r} but the vectors are "
            f"{store.dim}-d {store.dtype}",
        )
    n = doc.get("count")
    if not _int(n, 1, MAX_ITEMS):
        raise _fail(store, "gallery", f"has an invalid item count {n!r}")
    classes = doc.get("classes")
    if classes is not None and not (
        isinstance(classes, list)
        and all(isinstance(c, str) for c in classes)
        and len(set(classes)) == len(classes)
    ):
        raise _fail(store, "gallery", "has 'classes' that are not a list of distinct names")
    src = doc.get("source")
    if not isinstance(src, dict) or not all(
        isinstance(src.get(k), str | type(None)) for k in ("kind", "data", "split")
    ):
        raise _fail(store, "gallery", "has a malformed 'source'")
    held = store.count()
    if held != n:
        raise DataError(
            f"index {store.uri}: holds {held} vectors but its 'gallery' record says {n}; "
            "the gallery was damaged or edited"
        )
    return doc


# ----------------------------------------------------------------------------- versions


def version_record(emb, model: str) -> dict:
    """A model version: what identifies it, its contract and its class names."""
    return {
        "fingerprint": str(emb.fingerprint),
        "contract": emb.contract,
        "model": str(model),
        "added": utc_now(),
        "class_names": {str(k): v for k, v in emb.class_names.items()},
    }


def _check_version(store: GalleryStore, key: str, v: Any) -> dict:
    if not isinstance(v, dict) or f"version/{v.get('fingerprint')}" != key:
        raise _fail(store, key, "does not name its own fingerprint")
    if not HEX64.match(v["fingerprint"]):
        raise _fail(store, key, "has a fingerprint that is not a SHA-256 (64 hex digits)")
    c = v.get("contract")
    if not (
        isinstance(c, dict)
        and c.get("feat_dim") == store.dim
        and _int(c.get("in_channels"), 1, 10**6)
        and isinstance(c.get("head"), str)
    ):
        raise _fail(store, key, f"has a malformed contract (or not {store.dim}-d)")
    if not isinstance(v.get("model"), str) or not isinstance(v.get("added"), str):
        raise _fail(store, key, "lacks its model path or date")
    names = v.get("class_names", {})
    if not isinstance(names, dict) or not all(isinstance(x, str) for x in names.values()):
        raise _fail(store, key, "has malformed class names")
    return v


def read_versions(store: GalleryStore) -> list[dict]:
    """Every model version, in the order they were added."""
    keys = store.record_keys("version/")
    out = [_check_version(store, k, store.get_record(k)) for k in keys]
    return sorted(out, key=lambda v: (v["added"], v["fingerprint"]))


# ----------------------------------------------------------------------------- checks


def check_verdict(verdict: Any) -> dict:
    """A ``compatkit check`` verdict, validated; one line naming the field at fault."""
    if not isinstance(verdict, Mapping):
        raise InputError(f"check verdict must be a JSON object, got {type(verdict).__name__}")
    if verdict.get("format") != CHECK_FORMAT:
        raise InputError(
            f"check verdict: format is {verdict.get('format')!r}, not {CHECK_FORMAT!r}"
        )
    if not _int(verdict.get("format_version"), 1, 10**6):
        raise InputError(f"check verdict: invalid format_version {verdict.get('format_version')!r}")
    for side in ("old", "new"):
        m = verdict.get(side)
        if not isinstance(m, Mapping) or not HEX64.match(str(m.get("fingerprint", ""))):
            raise InputError(
                f"check verdict: {side!r} must be an object with a 'fingerprint' (SHA-256)"
            )
    if not isinstance(verdict.get("compatible"), bool):
        raise InputError("check verdict: 'compatible' must be true or false")
    try:
        import json

        return json.loads(json.dumps(verdict, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise InputError(f"check verdict is not plain JSON ({e})") from None


def read_checks(store: GalleryStore) -> list[dict]:
    """The recorded verdicts, oldest first; a malformed one is refused, naming its key."""
    out = []
    for key in store.record_keys("check/"):
        entry = store.get_record(key)
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("recorded"), str):
                raise InputError("no 'recorded' time")
            out.append(check_verdict(entry.get("verdict")))
        except InputError as e:
            raise _fail(store, key, f"is malformed ({e})") from None
    return out


def append_check(store: GalleryStore, verdict: Mapping) -> dict:
    """Record a verdict as a new row (after the existing ones were read and found sound)."""
    v = check_verdict(verdict)
    read_checks(store)  # refuse to add to a damaged record
    entry = {"recorded": utc_now(), "verdict": v}
    store.put_records({f"check/{time.time_ns():020d}-{secrets.token_hex(4)}": entry})
    return entry


# ----------------------------------------------------------------------------- the plan


def read_plan(store: GalleryStore, doc: Mapping, versions: list[dict]) -> dict | None:
    """The unfinished backfill's plan, or None; every field checked against the gallery."""
    plan = store.get_record("plan")
    if plan is None:
        return None
    n = doc["count"]

    def bad(why: str) -> DataError:
        return _fail(store, "plan", why)

    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise bad(f"is not a {PLAN_FORMAT!r} record")
    if plan.get("new") not in {v["fingerprint"] for v in versions}:
        raise bad("plans for a model version the gallery does not record")
    if plan.get("policy") not in POLICIES:
        raise bad(f"has an unknown policy {plan.get('policy')!r}")
    f = plan.get("fraction")
    if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
        raise bad(f"has an invalid fraction {f!r}")
    if not _int(plan.get("seed"), -(2**63), 2**63 - 1):
        raise bad(f"has an invalid seed {plan.get('seed')!r}")
    if not _int(plan.get("chunk"), 1, MAX_CHUNK):
        raise bad(f"has an invalid chunk {plan.get('chunk')!r}")
    had = plan.get("had")
    if not _int(had, 0, n):
        raise bad(f"has an invalid count of items already done {had!r}")
    order = plan.get("order")
    if not isinstance(order, list) or not all(_int(i, 0, n - 1) for i in order):
        raise bad(f"has an 'order' that is not a list of item positions below {n}")
    if len(set(order)) != len(order):
        raise bad("lists an item more than once")
    if had + len(order) != round(f * n):
        raise bad(
            f"plans {len(order)} items after {had} done, but fraction {f} of {n} items is "
            f"{round(f * n)}"
        )
    if not isinstance(plan.get("decided", {}), dict) or not isinstance(plan.get("model"), str):
        raise bad("lacks its model path or what decided it")
    return plan


def plan_target(fraction: float, count: int) -> int:
    """Items a backfill to ``fraction`` leaves embedded by the new model."""
    f = float(fraction)
    if not math.isfinite(f) or not 0.0 <= f <= 1.0:
        raise InputError(f"--fraction {fraction}: must lie in [0, 1]")
    return round(f * count)
