"""Output files named after their input shard, finished shard by shard, so a rerun can skip them.

A shard is complete when its manifest ``_shards/<name>.json`` exists; the manifest is written
last, after ``refined/<name>.parquet`` and ``rejected/<name>.parquet`` are in place, so a
half-written shard is never taken for complete.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from arhn_ray.data.readers import filesystem
from arhn_ray.data.records import INPUT_SCHEMA, OUTPUT_SCHEMA, REJECTED_SCHEMA
from arhn_ray.stats import RunStats

log = logging.getLogger(__name__)
INPUT_FIELDS = [f.name for f in INPUT_SCHEMA]


def complete_shards(output: str, storage_options: dict | None = None) -> set[str]:
    fs, root = filesystem(output, storage_options)
    folder = root.rstrip("/") + "/_shards"
    if not fs.exists(folder):
        return set()
    return {p.rsplit("/", 1)[-1][: -len(".json")] for p in fs.glob(folder + "/*.json")}


def shard_manifests(output: str, storage_options: dict | None = None) -> list[dict]:
    fs, root = filesystem(output, storage_options)
    out = []
    for p in sorted(fs.glob(root.rstrip("/") + "/_shards/*.json")):
        with fs.open(p, "rt") as f:
            out.append(json.load(f))
    return out


class _Shard:
    def __init__(self, sink: ShardSink, name: str, expected: int):
        self.name = name
        self.expected = expected
        self.seen: set[int] = set()
        self.stats = RunStats()
        self.refined: list[dict] = []
        self.rejected: list[dict] = []
        self.writers: dict[str, tuple[pq.ParquetWriter, str, object]] = {}
        self.sink = sink
        self.error: str | None = None

    def flush(self, kind: str, force: bool = False) -> None:
        rows = self.refined if kind == "refined" else self.rejected
        if not rows or (not force and len(rows) < self.sink.flush_rows):
            return
        schema = OUTPUT_SCHEMA if kind == "refined" else REJECTED_SCHEMA
        if kind not in self.writers:
            tmp = f"{self.sink.root}/{kind}/.{self.name}.{uuid.uuid4().hex[:8]}.tmp"
            handle = self.sink.fs.open(tmp, "wb")
            self.writers[kind] = (pq.ParquetWriter(handle, schema), tmp, handle)
        self.writers[kind][0].write_table(pa.Table.from_pylist(rows, schema=schema))
        rows.clear()

    def finish(self) -> dict:
        fs, root = self.sink.fs, self.sink.root
        counts = {"refined": 0, "rejected": 0}
        for kind, schema in (("refined", OUTPUT_SCHEMA), ("rejected", REJECTED_SCHEMA)):
            self.flush(kind, force=True)
            final = f"{root}/{kind}/{self.name}.parquet"
            if kind in self.writers:
                writer, tmp, handle = self.writers.pop(kind)
                writer.close()
                handle.close()
                fs.mv(tmp, final)
            else:
                with fs.open(final, "wb") as f:
                    pq.write_table(schema.empty_table(), f)
        counts["refined"] = sum(c["queries"] for c in self.stats.subsets.values())
        counts["rejected"] = sum(c["rejected"] for c in self.stats.subsets.values())
        manifest = {"shard": self.name, "rows": self.expected, **counts, "stats": self.stats.to_dict()}
        with fs.open(f"{root}/_shards/{self.name}.json", "wt") as f:
            json.dump(manifest, f)
        return manifest

    def abandon(self) -> None:
        for writer, tmp, handle in self.writers.values():
            try:
                writer.close()
                handle.close()
                self.sink.fs.rm(tmp)
            except Exception:  # pragma: no cover - best effort on a shard already failed
                pass
        self.writers.clear()


class ShardSink:
    """Takes the pipeline's envelopes at the driver and writes each shard's two files."""

    def __init__(self, output: str, expected: dict[str, int], storage_options: dict | None = None, flush_rows: int = 512):
        self.fs, root = filesystem(output, storage_options)
        self.root = root.rstrip("/")
        for sub in ("refined", "rejected", "_shards"):
            self.fs.makedirs(f"{self.root}/{sub}", exist_ok=True)
        self.flush_rows = flush_rows
        self.shards = {name: _Shard(self, name, n) for name, n in expected.items()}
        self.finished: list[dict] = []
        self.failed: dict[str, str] = {}
        self.rows_done = 0
        for name, n in expected.items():
            if n == 0:
                self.finished.append(self.shards.pop(name).finish())

    def add(self, envelopes: list[dict]) -> None:
        by_shard = defaultdict(list)
        for env in envelopes:
            by_shard[env["shard"]].append(env)
        for name, envs in by_shard.items():
            shard = self.shards.get(name)
            if shard is None:
                continue
            for env in envs:
                if env["status"] == "file_error":
                    shard.error = env["reason"]
                    continue
                if env["row_index"] in shard.seen:
                    raise RuntimeError(f"shard {name}: row {env['row_index']} arrived twice")
                shard.seen.add(env["row_index"])
                self._route(shard, env)
                self.rows_done += 1
            shard.flush("refined")
            shard.flush("rejected")
            if shard.error:
                log.error("input shard %s could not be read: %s; its partial output is discarded", name, shard.error)
                shard.abandon()
                self.failed[name] = shard.error
                del self.shards[name]
            elif len(shard.seen) == shard.expected:
                self.finished.append(shard.finish())
                del self.shards[name]
                log.info("shard %s complete: %d rows", name, shard.expected)

    def _route(self, shard: _Shard, env: dict) -> None:
        shard.stats.add_timing(env.get("engine_s") or 0.0, env.get("start_s") or 0.0)
        record = json.loads(env["record"])
        if env["status"] == "ok":
            shard.refined.append(record)
            shard.stats.add_refined(record)
            return
        subset = record.get("subset") if isinstance(record, dict) else None
        qid = record.get("query_id") if isinstance(record, dict) else None
        original = {k: record.get(k) for k in INPUT_FIELDS if k in record} if isinstance(record, dict) and "llm" in record else record
        shard.rejected.append(
            {
                "query_id": qid if isinstance(qid, str) else None,
                "source": shard.name,
                "row_index": env["row_index"],
                "field": env["field"],
                "reason": env["reason"],
                "row": json.dumps(original, ensure_ascii=False, default=str),
            }
        )
        shard.stats.add_rejected(subset if isinstance(subset, str) else None, env["reason"] or "unknown")

    def close(self) -> None:
        for name, shard in list(self.shards.items()):
            missing = shard.expected - len(shard.seen)
            shard.abandon()
            self.failed[name] = f"{missing} of {shard.expected} rows did not come back"
            log.error("shard %s incomplete: %s", name, self.failed[name])
        self.shards.clear()
