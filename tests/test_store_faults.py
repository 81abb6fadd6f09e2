"""Issue 26.4: S3 that throttles and drops. The job reads its input and writes its parts and
manifests through a proxy that answers ``503 SlowDown``, ``500`` and resets on a fixed schedule;
every row ends in the output once, and every part marked finished reads back whole."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import create_bucket
from faulty_s3 import FaultyS3
from helpers import make_row
from test_reliability import good_recordings, replay_cfg, write_jsonl

pytestmark = pytest.mark.ray


def test_a_store_that_throttles_and_drops_loses_and_doubles_nothing(ray_cluster, tmp_path, s3_server):
    import s3fs

    from arhn_ray.pipeline.job import run

    rows = [make_row(2, qid=f"s{i}") for i in range(40)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    write_jsonl(tmp_path / "rec.jsonl", good_recordings(rows))
    create_bucket(s3_server, "flaky")
    direct = s3fs.S3FileSystem(**s3_server)  # the store itself, past the proxy: what is really there
    direct.put(str(tmp_path / "rows.jsonl"), "flaky/in/rows.jsonl")
    proxy = FaultyS3(s3_server["client_kwargs"]["endpoint_url"], rate=0.2, seed=7)
    try:
        so = json.dumps(proxy.options(s3_server))
        cfg = replay_cfg("s3://flaky/in/", tmp_path / "rec.jsonl", "s3://flaky/out", "input.part_rows=10",
                         f"input.storage_options={so}", f"output.storage_options={so}", "pipeline.progress=false")  # fmt: skip
        stats = run(cfg)
    finally:
        proxy.close()
    assert stats["overall"]["queries"] + stats["overall"]["rejected"] == 40
    faults = {kind for _, kind in proxy.injected}
    assert faults == {"read", "listing", "write"} and {f for f, _ in proxy.injected} == {"slowdown", "internal", "reset"}, (
        proxy.injected
    )
    print("faults injected and absorbed:", dict(proxy.injected), "of", dict(proxy.requests))
    seen: list[str] = []
    manifests = direct.glob("flaky/out/_parts/*/*.json")
    assert len(manifests) >= 3
    for path in manifests:  # a part marked finished is whole: its files hold what its manifest counts
        manifest = json.loads(direct.cat(path))
        key = f"{manifest['shard']}/{manifest['part']}"
        for kind in ("refined", "rejected"):
            with direct.open(f"flaky/out/{kind}/{key}.parquet", "rb") as f:
                table = pq.read_table(f)
            assert table.num_rows == manifest[kind], (key, kind)
            seen += table.column("query_id").to_pylist()
    assert sorted(seen) == sorted(r["query_id"] for r in rows)  # every row once
    assert not direct.glob("flaky/out/**/.*.tmp")  # no temporary file left behind


def test_a_store_that_goes_down_mid_run_stops_it_with_a_clear_error_and_a_rerun_completes(ray_cluster, tmp_path, s3_server):
    import threading
    import time

    import s3fs

    from arhn_ray.pipeline.faults import StoreFailed
    from arhn_ray.pipeline.job import run

    rows = [make_row(2, qid=f"d{i}") for i in range(40)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    write_jsonl(tmp_path / "rec.jsonl", good_recordings(rows))
    create_bucket(s3_server, "down")
    direct = s3fs.S3FileSystem(**s3_server)
    direct.put(str(tmp_path / "rows.jsonl"), "down/in/rows.jsonl")
    proxy = FaultyS3(s3_server["client_kwargs"]["endpoint_url"], rate=0.0)
    # the clients' own retries kept short, so that "down" is reached in seconds (s3fs's defaults take ~2 minutes)
    options = proxy.options(s3_server) | {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
    so = json.dumps(options)
    args = ("s3://down/in/", tmp_path / "rec.jsonl", "s3://down/out", "input.part_rows=10", "pipeline.batch_size=2",
            "engine.replay_delay_s=0.5", f"input.storage_options={so}", f"output.storage_options={so}", "pipeline.progress=false")  # fmt: skip

    def down_after_the_first_part() -> None:
        deadline = time.monotonic() + 300
        while not direct.glob("down/out/_parts/*/*.json") and time.monotonic() < deadline:
            time.sleep(0.1)
        proxy.down = True

    threading.Thread(target=down_after_the_first_part, daemon=True).start()
    try:
        with pytest.raises(
            StoreFailed, match=r"writing to s3://down/out failed after the storage client's retries .* parts are written"
        ):
            run(replay_cfg(*args))
        assert proxy.down
        proxy.down = False
        stats = run(replay_cfg(*args))  # the same command again, the store back: it goes on from the parts written
    finally:
        proxy.close()
    written = []
    for kind in ("refined", "rejected"):
        for path in direct.glob(f"down/out/{kind}/*/*.parquet"):
            with direct.open(path, "rb") as f:
                written += pq.read_table(f).column("query_id").to_pylist()
    assert sorted(written) == sorted(r["query_id"] for r in rows) and stats["overall"]["queries"] == 40
