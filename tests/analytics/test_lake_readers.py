"""Reads of the lake while an export rewrites it (an erasure replaces and deletes part files): the read is retried
and succeeds; a file removed or replaced under it is a retryable 503 ``lake_changing``, never a 500 and never
"damaged"; only a truly unreadable file is ``lake_unreadable``."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chorus.analytics import lake
from chorus.analytics.engine import LakeUnreadable, open_lake, readable
from chorus.analytics.paths import path_report
from tests.analytics.lakegen import WS, LakeWriter


def _lake(root):
    w = LakeWriter(root)
    for p in range(200):
        for day in range(0, 60, 3):
            w.touch(f"p{p}", day * 24 + p % 7, ("web", "email", "sms")[p % 3])
        w.order(f"p{p}", 61 * 24, 10.0)
    w.touch("zed", 100 * 24, "sms").order("zed", 100 * 24 + 1, 99.0)  # alone in its day's file
    w.write()
    return sorted((root / "events").rglob("*.parquet"))


def test_reports_read_during_an_erasure_rewrite_succeed(tmp_path):
    files = _lake(tmp_path)
    (zeds,) = [f for f in files if "zed" in pq.ParquetFile(f).read()["profile_id"].to_pylist()]
    with readable(tmp_path):
        with_zed = path_report(open_lake(tmp_path, workspace_id=WS))
    stop = threading.Event()

    def export_erasing():
        # what an erasure's run does: every event file rewritten (here without a person who is not in it: the
        # same rows), and the file left with none of its rows deleted
        n = 0
        while not stop.is_set():
            for path in files:
                if path == zeds:
                    if n == 1:
                        path.unlink()
                    continue
                lake._drop_rows(path, "profile_id", pa.array(["nobody"]))
            n += 1

    writer = threading.Thread(target=export_erasing)
    writer.start()
    try:
        got = []
        for _ in range(6):
            with readable(tmp_path):
                got.append(path_report(open_lake(tmp_path, workspace_id=WS)))
    finally:
        stop.set()
        writer.join()
    with readable(tmp_path):
        without_zed = path_report(open_lake(tmp_path, workspace_id=WS))
    assert with_zed != without_zed
    assert all(g in (with_zed, without_zed) for g in got)  # the lake before or after, never a mix or a failure


def test_a_file_removed_under_a_read_is_a_retryable_503_not_damage(tmp_path):
    import duckdb

    from chorus.analytics.engine import LakeChanging  # new: imported here so the other tests run on older code

    gone = tmp_path / "events" / f"workspace_id={WS}" / "date=2026-03-01" / "part-1-9.parquet"
    with pytest.raises(LakeChanging) as err, readable(tmp_path):
        raise duckdb.IOException(f'IO Error: Cannot open file "{gone}": No such file or directory')
    assert err.value.status == 503 and err.value.code == "lake_changing" and err.value.field == "lake"
    assert "try again" in err.value.message and "damaged" not in err.value.message
    assert str(tmp_path) not in err.value.message
    # DuckDB's Thrift error (a footer of one file, pages of its replacement) is the base duckdb.Error: no 500.
    # It names no file: "changing" only while an export holds the lake (review), damage otherwise
    import fcntl
    import os

    from chorus.analytics.lake import LOCK_FILE

    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LakeChanging), readable(tmp_path):
            raise duckdb.Error("TProtocolException: Invalid data")
    finally:
        os.close(fd)
    with pytest.raises(LakeUnreadable), readable(tmp_path):
        raise duckdb.Error("TProtocolException: Invalid data")


def test_a_damaged_page_is_damage_on_every_read_not_a_lake_changing(tmp_path):
    """Review: a flipped byte in a page header (bit rot, a torn write) fails with DuckDB's Thrift error on every
    read, as a file replaced mid-read does; with no export running it is damage (lake_unreadable, logged as an
    error), not "changing, try again" for good."""
    import pyarrow.parquet as pq

    f = _lake(tmp_path)[0]
    data = bytearray(f.read_bytes())
    data[pq.ParquetFile(f).metadata.row_group(0).column(0).data_page_offset + 3] = 0x7F
    f.write_bytes(bytes(data))
    for _ in range(2):
        with pytest.raises(LakeUnreadable), readable(tmp_path):
            path_report(open_lake(tmp_path, workspace_id=WS))


def test_a_damaged_file_is_still_lake_unreadable_after_the_retries(tmp_path):
    _lake(tmp_path)
    bad = tmp_path / "events" / f"workspace_id={WS}" / "date=2026-03-02" / "part-99-99.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"PAR1 truncated")
    with pytest.raises(LakeUnreadable) as err, readable(tmp_path):
        path_report(open_lake(tmp_path, workspace_id=WS))
    assert "date=2026-03-02/part-99-99.parquet" in err.value.message and "damaged" in err.value.message
