"""Output written part by part as the run goes, so a rerun skips every finished part.

A part's refined and rejected files are written, then its manifest (where: data/layout.py). A
part is complete when its manifest exists; the manifest is written last, so a half-written part
is never taken for complete. Rows are streamed into temporary files while a part is open: the
driver holds at most ``flush_rows`` rows of each part in flight.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.parts import Part
from arhn_ray.data.records import INPUT_SCHEMA, OUTPUT_SCHEMA, REJECTED_SCHEMA
from arhn_ray.outputs.stats import RunStats

log = logging.getLogger(__name__)
INPUT_FIELDS = [f.name for f in INPUT_SCHEMA]


class _Part:
    def __init__(self, sink: PartSink, part: Part):
        self.part = part
        self.name = part.key
        self.expected = part.rows  # JSONL: known when the reader's end marker arrives
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
            tmp = f"{self.sink.out.shard_dir(kind, self.part.shard)}/.{self.part.id}.{uuid.uuid4().hex[:8]}.tmp"
            handle = self.sink.out.fs.open(tmp, "wb")
            self.writers[kind] = (pq.ParquetWriter(handle, schema), tmp, handle)
        self.writers[kind][0].write_table(pa.Table.from_pylist(rows, schema=schema))
        rows.clear()

    def finish(self) -> dict:
        out = self.sink.out
        counts = {"refined": 0, "rejected": 0}
        for kind, schema in (("refined", OUTPUT_SCHEMA), ("rejected", REJECTED_SCHEMA)):
            self.flush(kind, force=True)
            final = out.part_file(kind, self.name)
            if kind in self.writers:
                writer, tmp, handle = self.writers.pop(kind)
                writer.close()
                handle.close()
                out.fs.mv(tmp, final)
            else:
                with out.fs.open(final, "wb") as f:
                    pq.write_table(schema.empty_table(), f)
        counts["refined"] = sum(c["queries"] for c in self.stats.subsets.values())
        counts["rejected"] = sum(c["rejected"] for c in self.stats.subsets.values())
        manifest = {
            "shard": self.part.shard,
            "part": self.part.id,
            "uri": self.part.uri,
            "part_rows": self.part.part_rows,
            "input": json.loads(self.part.to_json()),  # the input part it came from: review reads only that again
            "rows": len(self.seen),
            **counts,
            "stats": self.stats.to_dict(),
        }
        with out.fs.open(out.manifest_file(self.name), "wt") as f:
            json.dump(manifest, f)
        return manifest

    def abandon(self) -> None:
        for writer, tmp, handle in self.writers.values():
            try:
                writer.close()
                handle.close()
                self.sink.out.fs.rm(tmp)
            except Exception:  # pragma: no cover - best effort on a shard already failed
                pass
        self.writers.clear()


class PartSink:
    """Takes the pipeline's envelopes at the driver and writes each part's two files as soon as
    its last row is in."""

    def __init__(self, out: OutputLayout, parts: list[Part], flush_rows: int = 256):
        self.out = out
        for sub in (*layout.KINDS, layout.PARTS):
            for shard in {p.shard for p in parts}:
                self.out.fs.makedirs(self.out.shard_dir(sub, shard), exist_ok=True)
        self.flush_rows = flush_rows
        self.parts = {p.key: _Part(self, p) for p in parts}
        self.finished: list[dict] = []
        self.failed: dict[str, str] = {}
        # every row written so far, counted once by the same RunStats as each part's manifest
        self.total = RunStats()
        for key, part in list(self.parts.items()):
            if part.expected == 0:
                self.finished.append(self.parts.pop(key).finish())

    def add(self, envelopes: list[dict]) -> None:
        by_part = defaultdict(list)
        for env in envelopes:
            by_part[env["part"]].append(env)
        for key, envs in by_part.items():
            part = self.parts.get(key)
            if part is None:
                continue
            for env in envs:
                if env["status"] == "file_error":
                    part.error = env["reason"]
                    continue
                if env["status"] == "part_end":
                    part.expected = env["row_index"]
                    continue
                if env["row_index"] in part.seen:
                    raise RuntimeError(f"part {key}: row {env['row_index']} arrived twice")
                part.seen.add(env["row_index"])
                self._route(part, env)
            part.flush("refined")
            part.flush("rejected")
            if part.error:
                log.error("input part %s could not be read: %s; its partial output is discarded", key, part.error)
                part.abandon()
                self.failed[key] = part.error
                del self.parts[key]
            elif part.expected is not None and len(part.seen) == part.expected:
                self.finished.append(part.finish())
                del self.parts[key]
                log.info("part %s written: %d rows", key, part.expected)

    def reopen(self) -> list[Part]:
        """The parts in flight when the pipeline failed (a node lost), emptied to run again: their
        temporary files removed and their rows taken out of the totals, so each row is written once."""
        parts = [open_part.part for open_part in self.parts.values()]
        for open_part in self.parts.values():
            open_part.abandon()
        self.parts = {p.key: _Part(self, p) for p in parts}
        self.total = RunStats()
        for manifest in self.finished:
            self.total.merge(RunStats.from_dict(manifest["stats"]))
        return parts

    @property
    def counts(self) -> Counter:
        """The counters of every row written so far (stats.COUNTERS: queries, rejected, relabel, ...)."""
        return self.total.overall()

    @property
    def engine_s(self) -> float:
        """The replicas' busy seconds over the rows written so far (summed over replicas)."""
        return self.total.timing["engine_s"]

    @property
    def rows_done(self) -> int:
        c = self.counts
        return c["queries"] + c["rejected"]

    def _route(self, part: _Part, env: dict) -> None:
        record = json.loads(env["record"])
        subset = record.get("subset") if isinstance(record, dict) else None
        for stats in (part.stats, self.total):
            stats.add_timing(env.get("engine_s") or 0.0, env.get("start_s") or 0.0, env.get("preemptions"))
            if env["status"] == "ok":
                stats.add_refined(record)
            else:
                stats.add_rejected(subset if isinstance(subset, str) else None, env["reason"] or "unknown")
        if env["status"] == "ok":
            part.refined.append(record)
            return
        qid = record.get("query_id") if isinstance(record, dict) else None
        original = (
            {k: record.get(k) for k in INPUT_FIELDS if k in record} if isinstance(record, dict) and "llm" in record else record
        )
        part.rejected.append(
            {
                "query_id": qid if isinstance(qid, str) else None,
                "source": part.part.shard,
                "row_index": env["row_index"],
                "field": env["field"],
                "reason": env["reason"],
                "row": json.dumps(original, ensure_ascii=False, default=str),
            }
        )

    def close(self) -> None:
        for name, part in list(self.parts.items()):
            part.abandon()
            self.failed[name] = f"{len(part.seen)} of {part.expected if part.expected is not None else '?'} rows came back"
            log.error("part %s incomplete: %s", name, self.failed[name])
        self.parts.clear()
