"""The gallery stores on the real engines (LanceDB, Milvus Lite): exact search against a
float64 brute-force ranking, the tie rule, the approximate indexes, records and their parts,
and every damaged, foreign or unreachable database refused in one line before use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from compatkit.errors import DataError, InputError
from compatkit.upgrade.store import Rows, base, create_store, open_store

from .index_helpers import ENGINES, add_rows, gallery_uri, unit_rows

pytest.importorskip("lancedb")
pytest.importorskip("milvus_lite")


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The obvious ranking: every score in float64, stable order (score desc, position asc)."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    pos = np.broadcast_to(np.arange(x.shape[0]), s.shape)
    order = np.lexsort((pos, -s), axis=1)[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def fill(uri: str, x: np.ndarray, version: str = "a" * 64):
    """A store of the rows of ``x`` (items ``item<i>`` of classes ``c<i % 3>``), and the
    vectors as it stores them."""
    dtype = "float32" if uri.endswith(".db") else "float16"
    s = create_store(uri, x.shape[1], dtype)
    add_rows(s, x, np.arange(x.shape[0]) % 3, version, step=64)
    return s, x.astype(dtype).astype(np.float32)


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def test_exact_search_is_the_float64_ranking(engine: str, tmp_path: Path) -> None:
    x = unit_rows(300, 8, 0)
    x[[17, 133, 249]] = x[5]  # four identical vectors: ties ordered by position
    s, stored = fill(gallery_uri(tmp_path, engine), x)
    try:
        s.scan_rows = 37  # the scan path crosses many blocks
        q = np.concatenate([unit_rows(30, 8, 1), x[5:6]])
        for k in (1, 6, 40):
            hits = s.search(q, k)
            want_p, want_s = brute_force(stored, q, k)
            np.testing.assert_array_equal(hits.positions, want_p)
            np.testing.assert_allclose(hits.scores, want_s, rtol=0, atol=1e-12)
        assert hits.positions[-1, :4].tolist() == [5, 17, 133, 249]
        row = hits.rows[5]
        assert (row["id"], row["label"], row["class"]) == ("item5", 2, "c2")
        assert row["version"] == "a" * 64
        assert s.search(q, 1000).positions.shape == (31, 300)  # at most the whole gallery
    finally:
        s.close()


def test_a_tie_group_longer_than_the_candidate_list_keeps_the_lowest(tmp_path: Path) -> None:
    """40 copies of one vector, k 3 + margin 16 candidates: the three lowest positions come
    back (the scan's rule; Milvus's own FLAT search picks among more than 16 exact ties)."""
    x = unit_rows(400, 8, 7)
    x[np.arange(9, 400, 10)] = x[4]
    s, _ = fill(gallery_uri(tmp_path, "lancedb"), x)
    s.scan_rows = 1000
    assert s.search(np.repeat(x[4:5], 25, axis=0), 3).positions.tolist() == [[4, 9, 19]] * 25


def test_upsert_fetch_scan_count_delete(engine: str, tmp_path: Path) -> None:
    x = unit_rows(130, 8, 2)
    s, stored = fill(gallery_uri(tmp_path, engine), x)
    try:
        y = unit_rows(3, 8, 3)
        s.upsert(
            Rows(
                np.array([4, 77, 129]),
                y,
                ["item4", "item77", "item129"],
                np.array([1, 2, 0]),
                ["c1", "c2", "c0"],
                ["b" * 64] * 3,
            )
        )
        assert (s.count(), s.count(["b" * 64]), s.count(["a" * 64]), s.count([])) == (
            130,
            3,
            127,
            0,
        )
        got = s.fetch([77, 3, 77], ("vector", "item_id", "version"))
        assert got.ids == ["item77", "item3", "item77"] and got.versions[0] == "b" * 64
        np.testing.assert_array_equal(got.vectors[1], stored[3])
        np.testing.assert_array_equal(got.vectors[0], y[1].astype(s.dtype).astype(np.float32))
        seen = np.concatenate([r.pos for r in s.scan(("version",), rows=50)])
        assert sorted(seen.tolist()) == list(range(130))
        assert sorted(np.concatenate([r.pos for r in s.scan(("pos",), ["b" * 64])]).tolist()) == [
            4,
            77,
            129,
        ]
        hits = s.search(y, 2, versions=["b" * 64])  # a search with a filter
        assert hits.positions[:, 0].tolist() == [4, 77, 129]
        s.delete([10, 11])
        assert s.count() == 128
        with pytest.raises(DataError, match="item position 10 is missing"):
            s.fetch([9, 10], ("item_id",))
    finally:
        s.close()


def test_records_round_trip_in_parts_and_damage_is_refused(
    engine: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(base, "PART_CHARS", 50)
    s, _ = fill(gallery_uri(tmp_path, engine), unit_rows(10, 8, 4))
    try:
        big = {"order": list(range(100))}
        s.put_records({"plan": big, "small": {"a": 1}})
        assert s.get_record("plan") == big and s.get_record("small") == {"a": 1}
        parts = s._list_keys("plan@")
        assert len(parts) == len('{"order":[' + ",".join(map(str, range(100))) + "]}") // 50 + 1
        s.put_records({"plan": {"order": list(range(60))}})
        assert len(s._list_keys("plan@")) < len(parts)  # the old parts are gone
        assert s.record_keys("") == ["plan", "small"]
        s._put_rows({s._list_keys("plan@")[0]: '{"order":[9,9,9'})
        with pytest.raises(DataError, match="do not match their sha256"):
            s.get_record("plan")
        s._delete_rows(s._list_keys("plan@")[:1])
        with pytest.raises(DataError, match="parts are missing"):
            s.get_record("plan")
        s._put_rows({"small": "{not json"})
        with pytest.raises(DataError, match="record 'small': not valid JSON"):
            s.get_record("small")
        s._put_rows({"small": "[" * 60_000})
        with pytest.raises(DataError, match=r"nested too deeply|not valid JSON"):
            s.get_record("small")
        s.put_records({"plan": None})
        assert s.get_record("plan") is None and s._list_keys("plan@") == []
    finally:
        s.close()


def test_approximate_index_against_exact(engine: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    centres = unit_rows(8, 16, 6)
    x = centres[rng.integers(0, 8, 1200)] + 0.3 * unit_rows(1200, 16, 7)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s, _ = fill(gallery_uri(tmp_path, engine), x.astype(np.float32))
    try:
        with pytest.raises(InputError, match="no approximate vector index"):
            s.search(x[:2], 5, approx=True)
        s.create_index("IVF_FLAT", {"partitions": 4})
        assert s.index_info()["type"].upper().replace("IVFFLAT", "IVF_FLAT") == "IVF_FLAT"
        q = x[:20] + 0.01 * unit_rows(20, 16, 8)
        exact = s.search(q, 10)  # still exact: a scan where the field's index is approximate
        approx = s.search(q, 10, approx=True, params={"nprobes": 4})
        np.testing.assert_array_equal(approx.positions, exact.positions)  # every partition probed
        np.testing.assert_allclose(approx.scores, exact.scores, atol=1e-12)
        with pytest.raises(InputError, match="--index-type 'SPHERE'"):
            s.create_index("SPHERE")
    finally:
        s.close()


def test_what_compatkit_never_writes_is_refused_before_opening(tmp_path: Path) -> None:
    uri = gallery_uri(tmp_path, "lancedb")
    fill(uri, unit_rows(20, 8, 9))
    data = next(p for p in Path(uri).rglob("*.lance") if p.is_file())
    other = tmp_path / "other.lance"
    other.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(other)  # another valid file, through a link
    with pytest.raises(DataError, match="is a symbolic link"):
        open_store(uri)
    data.unlink()
    os.mkfifo(data)  # a reader would hang on it
    t0 = time.monotonic()
    with pytest.raises(DataError, match="not a regular file"):
        open_store(uri)
    assert time.monotonic() - t0 < 10


def test_foreign_databases_are_refused(tmp_path: Path) -> None:
    import lancedb

    db = lancedb.connect(str(tmp_path / "foreign"))
    db.create_table("songs", data=[{"vector": [0.1, 0.2], "title": "x"}])
    with pytest.raises(DataError, match=r"not a compatkit gallery .*\['songs'\]"):
        open_store(str(tmp_path / "foreign"))
    (tmp_path / "file.db").write_text("not a database")
    with pytest.raises(DataError, match="not a Milvus Lite database"):
        open_store(str(tmp_path / "file.db"))
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(DataError, match="not a Milvus Lite database"):
        open_store(str(tmp_path / "folder.db"))
    assert list((tmp_path / "folder.db").iterdir()) == []  # nothing written into it
    with pytest.raises(DataError, match="no such LanceDB database"):
        open_store(str(tmp_path / "nowhere"))


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_a_milvus_server_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(InputError, match=rf"127\.0\.0\.1:{port}: Milvus does not answer within"):
        open_store(f"http://127.0.0.1:{port}", "gallery", timeout=2)
    srv, port = _silent_server()
    try:
        t0 = time.monotonic()
        with pytest.raises(InputError, match="does not answer within 1 s"):
            open_store(f"http://127.0.0.1:{port}", "gallery", timeout=1)
        assert time.monotonic() - t0 < 30
    finally:
        srv.close()
    with pytest.raises(InputError, match="a Milvus server needs --collection"):
        open_store("http://127.0.0.1:1")


@pytest.mark.slow
def test_milvus_lite_serves_one_process_at_a_time(tmp_path: Path) -> None:
    uri = gallery_uri(tmp_path, "milvus-lite")
    s, _ = fill(uri, unit_rows(5, 8, 10))
    code = (
        "import sys\nfrom compatkit.upgrade.store import open_store\n"
        "try:\n    open_store(sys.argv[1])\nexcept Exception as e:\n    print(e)\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True)
        assert "open in another process: Milvus Lite serves one process" in r.stdout
    finally:
        s.close()
    r = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True)
    assert r.stdout == "" and r.returncode == 0, r.stderr


def test_vectors_that_are_not_finite_are_refused_not_served(engine: str, tmp_path: Path) -> None:
    x = unit_rows(40, 8, 11)
    s, _ = fill(gallery_uri(tmp_path, engine), x)
    try:
        nan = np.full((1, 8), np.nan, dtype=np.float32)
        row = Rows(np.array([7]), nan, ["item7"], np.array([1]), ["c1"], ["a" * 64])
        if engine == "lancedb":  # LanceDB itself refuses to store a NaN vector
            with pytest.raises((ValueError, RuntimeError), match="NaN"):
                s.upsert(row)
        else:  # Milvus stores it: the search refuses to serve it
            s.upsert(row)
            with pytest.raises(DataError, match="vector of item position 7 is not finite"):
                s.search(x[:3], 40)  # every item is a candidate: the damaged one among them
        with pytest.raises(DataError, match="a query vector is not finite"):
            s.search(nan, 3)
    finally:
        s.close()


def test_check_tree_passes_over_a_file_that_vanishes_while_it_is_checked(
    tmp_path: Path, monkeypatch
) -> None:
    """Another process committing to the gallery renames its temporary files while the tree
    is walked: a name listed but gone by its check is passed over, anything else still
    refused."""
    from compatkit.upgrade.store import local

    root = tmp_path / "g"
    root.mkdir()
    (root / "data").write_bytes(b"x")
    real = os.walk

    def walk(top):
        for folder, dirs, files in real(top):
            yield folder, dirs, [*files, ".tmp-renamed-meanwhile"]

    monkeypatch.setattr(local.os, "walk", walk)
    local.check_tree(root, "LanceDB database")
    os.mkfifo(root / "fifo")
    with pytest.raises(DataError, match="fifo is not a regular file"):
        local.check_tree(root, "LanceDB database")
