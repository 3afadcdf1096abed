"""The index on disk: shards and manifest written atomically, read back exactly, superseded
by backfill shards, and every corrupt or missing file refused in one line that names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from compatkit.errors import DataError, InputError
from compatkit.upgrade.index_store import (
    MANIFEST,
    Gallery,
    IndexBuilder,
    IndexWriter,
)

CONTRACT = {"feat_dim": 5, "in_channels": 1, "head": "simplex", "num_classes": 6}


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_index(
    root: Path, x: np.ndarray, dtype: str = "float16", shard_rows: int = 4, labels=None
) -> Path:
    """An index of the rows of ``x`` (version "a"*64), added in uneven pieces."""
    with IndexBuilder(root, x.shape[1], dtype, shard_rows, {"kind": "folder"}) as b:
        b.set_version("a" * 64, CONTRACT, "v1.pt")
        for a in range(0, len(x), 3):
            b.add(x[a : a + 3])
        classes = None if labels is None else [f"c{i}" for i in range(max(labels) + 1)]
        b.finish([f"item{i}" for i in range(len(x))], labels, classes)
    return root


def test_build_reads_back_the_rounded_vectors(tmp_path: Path) -> None:
    x = unit_rows(10, 5, 0)
    g = Gallery.open(make_index(tmp_path / "idx", x, labels=[0, 1] * 5))
    assert (g.count, g.dim, g.dtype) == (10, 5, "float16")
    assert [sh["rows"] for sh in g.shards] == [4, 4, 2]  # 3-row pieces cut at 4 rows
    np.testing.assert_array_equal(g.vectors(), x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(g.vectors([7, 2]), g.vectors()[[7, 2]])
    assert g.ids[3] == "item3" and g.classes == ["c0", "c1"] and g.labels.tolist() == [0, 1] * 5
    assert g.counts_by_version() == {0: 10}
    # The shards are plain .npy files any numpy reads.
    np.testing.assert_array_equal(
        np.load(tmp_path / "idx" / g.shards[1]["file"]), x[4:8].astype(np.float16)
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_float32_storage_is_exact(tmp_path: Path) -> None:
    x = unit_rows(7, 5, 1)
    g = Gallery.open(make_index(tmp_path / "idx", x, dtype="float32"))
    np.testing.assert_array_equal(g.vectors(), x)


def test_build_refuses_an_existing_path_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="taken: already exists"):
        IndexBuilder(tmp_path / "taken", 5)
    with pytest.raises(InputError, match="distinct item ids"):
        with IndexBuilder(tmp_path / "idx", 5) as b:
            b.set_version("a" * 64, CONTRACT, "m")
            b.add(unit_rows(2, 5, 0))
            b.finish(["same", "same"], None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no index, no temp folder


def test_backfill_shards_supersede_and_dead_shards_go(tmp_path: Path) -> None:
    x = unit_rows(10, 5, 2)
    root = make_index(tmp_path / "idx", x)
    y = unit_rows(10, 5, 3)
    with IndexWriter(root) as w:
        v = w.add_version("b" * 64, CONTRACT, "v2.pt")
        w.write_vectors(np.array([1, 2, 3, 5]), y[[1, 2, 3, 5]], v)
        w.write_vectors(np.array([0, 6, 7]), y[[0, 6, 7]], v)
    g = Gallery.open(root)
    new = np.isin(np.arange(10), [0, 1, 2, 3, 5, 6, 7])
    assert g.version_of.tolist() == new.astype(int).tolist()
    want = np.where(new[:, None], y, x).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(g.vectors(), want)
    # Build shard 0 (items 0-3) has no live row left: dropped from the manifest and the disk.
    files = {sh["file"] for sh in g.shards}
    assert "shards/000000.npy" not in files and not (root / "shards/000000.npy").exists()
    assert g.generation == 2 and [v["fingerprint"][0] for v in g.versions] == ["a", "b"]
    live = [b.live.tolist() for b in g.blocks()]
    assert live[0] == [True, False, False, False]  # shard 1 holds items 4-7: only 4 is live


def test_three_versions_at_once(tmp_path: Path) -> None:
    x, y, z = unit_rows(12, 5, 11), unit_rows(12, 5, 12), unit_rows(12, 5, 13)
    root = make_index(tmp_path / "idx", x, dtype="float32")
    with IndexWriter(root) as w:
        w.write_vectors(np.arange(0, 12, 2), y[::2], w.add_version("b" * 64, CONTRACT, "v2"))
        w.write_vectors(np.arange(0, 12, 3), z[::3], w.add_version("c" * 64, CONTRACT, "v3"))
        assert w.add_version("b" * 64, CONTRACT, "v2 again") == 1  # known: same index
    g = Gallery.open(root)
    want = [2 if i % 3 == 0 else 1 if i % 2 == 0 else 0 for i in range(12)]
    assert g.version_of.tolist() == want and g.live_versions() == [0, 1, 2]
    src = np.stack([x, y, z])[want, np.arange(12)]
    np.testing.assert_array_equal(g.vectors(), src)


def test_a_reader_keeps_its_snapshot_while_a_writer_commits(tmp_path: Path) -> None:
    x = unit_rows(8, 5, 4)
    root = make_index(tmp_path / "idx", x)
    before = Gallery.open(root)
    with IndexWriter(root) as w:
        v = w.add_version("b" * 64, CONTRACT, "v2.pt")
        w.write_vectors(np.arange(4), unit_rows(4, 5, 5), v)  # drops and deletes shard 0
    assert not (root / before.shards[0]["file"]).exists()
    np.testing.assert_array_equal(before.vectors(), x.astype(np.float16).astype(np.float32))


def test_a_killed_writers_leftovers_are_swept(tmp_path: Path) -> None:
    root = make_index(tmp_path / "idx", unit_rows(8, 5, 6))
    (root / "shards" / "000099.npy").write_bytes(b"half a shard")  # written, never committed
    (root / ".manifest.json.x.tmp").write_text("{")
    with IndexWriter(root):
        pass
    assert not (root / "shards" / "000099.npy").exists()
    assert not (root / ".manifest.json.x.tmp").exists()
    Gallery.open(root)


def test_missing_or_corrupt_files_name_themselves(tmp_path: Path) -> None:
    x = unit_rows(8, 5, 7)
    root = make_index(tmp_path / "idx", x)
    shard = root / "shards" / "000001.npy"
    data = shard.read_bytes()

    shard.write_bytes(data[: len(data) - 7])
    with pytest.raises(DataError, match=r"000001\.npy: truncated"):
        Gallery.open(root)
    shard.write_bytes(b"garbage" * 20)
    with pytest.raises(DataError, match=r"000001\.npy: not a valid \.npy"):
        Gallery.open(root)
    np.save(shard, np.zeros((4, 6), np.float16))
    with pytest.raises(DataError, match=r"000001\.npy: holds float16 \(4, 6\) but the manifest"):
        Gallery.open(root)
    shard.unlink()
    with pytest.raises(DataError, match=r"000001\.npy: no such file"):
        Gallery.open(root)
    shard.write_bytes(data)
    Gallery.open(root)

    m = root / MANIFEST
    text = m.read_text()
    m.write_text(text[:50])
    with pytest.raises(DataError, match=r"manifest\.json: not valid JSON"):
        Gallery.open(root)
    doc = json.loads(text)
    doc["shards"][0]["file"] = "../../etc/passwd"
    m.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="points outside the index"):
        Gallery.open(root)
    doc = json.loads(text)
    doc["format_version"] = 99
    m.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="newer than this compatkit"):
        Gallery.open(root)
    m.unlink()
    with pytest.raises(DataError, match=r"manifest\.json: no such file"):
        Gallery.open(root)
    with pytest.raises(DataError, match="no such directory"):
        Gallery.open(tmp_path / "nowhere")
    (root / "items.json").write_text('{"ids": ["a"]}')
    m.write_text(text)
    with pytest.raises(DataError, match=r"items\.json: 1 ids but the index holds 8"):
        Gallery.open(root)


def test_a_second_writer_waits_then_is_refused(tmp_path: Path) -> None:
    root = make_index(tmp_path / "idx", unit_rows(4, 5, 8))
    with IndexWriter(root):
        with pytest.raises(InputError, match="another compatkit process is writing it"):
            with IndexWriter(root, wait_s=0.3):
                pass


def test_files_are_replaced_never_rewritten_in_place(tmp_path: Path) -> None:
    """Each commit gives the manifest a new inode (rename), so a reader that opened the old
    file reads it whole: the old generation, not a mix."""
    root = make_index(tmp_path / "idx", unit_rows(8, 5, 9))
    with open(root / MANIFEST, "rb") as f:
        ino = os.fstat(f.fileno()).st_ino
        with IndexWriter(root) as w:
            w.write_vectors(
                np.array([2]), unit_rows(1, 5, 10), w.add_version("b" * 64, CONTRACT, "m")
            )
        assert json.loads(f.read())["generation"] == 0
    assert os.stat(root / MANIFEST).st_ino != ino


def test_info_counts_versions_and_verify_finds_a_flipped_byte(tmp_path: Path) -> None:
    from compatkit.upgrade.index import describe

    root = make_index(tmp_path / "idx", unit_rows(8, 5, 14))
    with IndexWriter(root) as w:
        w.write_vectors(
            np.array([1, 6]), unit_rows(2, 5, 15), w.add_version("b" * 64, CONTRACT, "v2")
        )
    info = describe(root, verify=True)
    assert [v["vectors"] for v in info["versions"]] == [6, 2] and info["corrupt"] == []
    assert "aaaaaaaaaaaa          6 ( 75.0%)  v1.pt" in info["text"]
    shard = root / "shards" / "000001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, valid header: only the digest can tell
    shard.write_bytes(bytes(data))
    info = describe(root, verify=True)
    assert info["corrupt"] == ["shards/000001.npy"] and "1 corrupt shard(s)" in info["text"]
