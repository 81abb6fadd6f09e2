"""The Ray Data stages: read a part of a file, then refine in an actor pool (one engine per replica).

Rows travel between stages as envelopes ``{shard, part, row_index, status, field, reason, record}``
with the row as JSON in ``record``: a rejected row keeps its raw form, and every row can be
followed from its input part to exactly one output. Each part ends with a ``part_end``
envelope whose ``row_index`` is the number of rows the part held, so the writer knows when a
part is whole without counting the file first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from arhn_ray.config import Config
from arhn_ray.data.parts import Part
from arhn_ray.data.rows import read_rows
from arhn_ray.engines.lifecycle import prepare_replica
from arhn_ray.engines.watchdog import is_engine_death, leave
from arhn_ray.refiners import Outcome, Refiner, method_for

log = logging.getLogger(__name__)

ENVELOPE = pa.schema(
    [
        ("shard", pa.string()),
        ("part", pa.string()),  # <shard>/<part id>
        ("row_index", pa.int64()),  # parquet: the row's number; JSONL: its first byte's offset
        ("status", pa.string()),  # ok | rejected | file_error | part_end
        ("field", pa.string()),
        ("reason", pa.string()),
        ("record", pa.string()),
        ("engine_s", pa.float64()),  # this row's share of the replica's time in the engine step
        ("start_s", pa.float64()),  # the replica's engine start, on the first row it returns
        ("preemptions", pa.int64()),  # vLLM's preemptions during the batch, on its first row (null: not exposed)
    ]
)


def envelope(
    part: Part, index: int, record: Any, status: str = "ok", field: str | None = None, reason: str | None = None
) -> dict:
    text = json.dumps(record, ensure_ascii=False, default=str)
    return {"shard": part.shard, "part": part.key, "row_index": index, "status": status, "field": field, "reason": reason,
            "record": text, "engine_s": 0.0, "start_s": 0.0, "preemptions": None}  # fmt: skip


def read_parts(batch: dict, fmt: str, max_passage_chars: int, storage_options: dict, block_rows: int = 64) -> Iterator[pa.Table]:
    """The rows of each part in ``batch["part"]``, validated, ``block_rows`` at a time (a bad row
    is rejected here with the field named), then the part's end marker. Memory is a block, not the file."""
    for spec in batch["part"]:
        part = Part.from_json(str(spec))
        out: list[dict] = []
        n = 0
        try:
            for r in read_rows(part, fmt, max_passage_chars, storage_options):
                n += 1
                out.append(
                    envelope(part, r.index, r.row)
                    if r.row is not None
                    else envelope(part, r.index, r.raw, "rejected", r.field, r.reason)
                )
                if len(out) >= block_rows:
                    yield pa.Table.from_pylist(out, schema=ENVELOPE)
                    out = []
        except Exception as e:  # an unreadable part: named, and the other parts go on
            out = [envelope(part, -1, None, "file_error", "file", f"{part.uri} ({part.id}): {type(e).__name__}: {e}")]
        else:
            out.append(envelope(part, n, None, "part_end"))
        yield pa.Table.from_pylist(out, schema=ENVELOPE)


class RefineStage:
    """A replica: owns one refiner (and so one engine or teacher) and runs the step its refiner
    declares for ``step`` (refiners/base.py's STEPS: ``fused``, or ``stage1`` / ``stage2``)."""

    def __init__(self, cfg: Config, step: str = "fused"):
        started = time.perf_counter()
        prepare_replica()  # a restarted replica first ends what its dead predecessor's engine left
        self.step = step
        self.refiner: Refiner = method_for(cfg).build(cfg, None)
        self.run = self._steps()[step]
        self.start_s: float | None = time.perf_counter() - started
        self._preemptions = self.refiner.metrics().preemptions
        # the replica's busy time, counted once however many batches overlap
        self._active = 0
        self._last = 0.0
        self._busy = 0.0
        self._charged = 0.0

    def __call__(self, batch: pa.Table) -> pa.Table:
        envelopes, todo, rows = self._open(batch)
        if todo:
            began = self._tick(+1)
            try:
                outcomes: list[Outcome] | Exception = self.run(rows)
            except Exception as e:  # a bug (the batch's rows are rejected) or a dead engine (the replica goes)
                if is_engine_death(e):
                    leave(str(e))
                outcomes = e
            self._finish(todo, outcomes, began, self._tick(-1))
        return pa.Table.from_pylist(envelopes, schema=ENVELOPE)

    def __del__(self) -> None:
        # Ray Data drops the UDF when the pool shuts down: stop the engine's processes with it
        refiner = self.__dict__.get("refiner")
        if refiner is not None:
            refiner.close()

    def _steps(self) -> dict:
        return self.refiner.steps()

    def _open(self, batch: pa.Table) -> tuple[list[dict], list[dict], list[dict]]:
        envelopes = batch.to_pylist()
        todo = [e for e in envelopes if e["status"] == "ok"]  # rejected rows and part markers pass through
        return envelopes, todo, [json.loads(e["record"]) for e in todo]

    def _tick(self, change: int) -> float:
        """Start (+1: returns the time) or end (-1: returns the busy time no batch has been given yet)."""
        now = time.perf_counter()
        if self._active:
            self._busy += now - self._last
        self._last = now
        self._active += change
        if change > 0:
            return now
        share, self._charged = self._busy - self._charged, self._busy
        return share

    def _finish(self, todo: list[dict], outcomes: list[Outcome] | Exception, began: float, share: float) -> None:
        """Writes the outcomes into the envelopes; a failed step rejects the batch's rows with the reason.
        ``share`` is the replica's busy time this batch accounts for (batches may overlap)."""
        # replica stdout reaches the driver's console: progress while a long batch runs
        print(f"arhn-ray replica ({self.step}): {len(todo)} rows in {time.perf_counter() - began:.1f} s", flush=True)
        for env in todo:
            env["engine_s"] = (env.get("engine_s") or 0.0) + share / len(todo)
        if self.start_s is not None:
            todo[0]["start_s"] = (todo[0].get("start_s") or 0.0) + self.start_s
            self.start_s = None
        if (now := self.refiner.metrics().preemptions) is not None:
            todo[0]["preemptions"] = (todo[0].get("preemptions") or 0) + now - (self._preemptions or 0)
            self._preemptions = now
        if isinstance(outcomes, Exception):
            log.error("refine step %s failed on a batch of %d rows", self.step, len(todo), exc_info=outcomes)
            for env in todo:
                env.update(status="rejected", field="llm", reason=f"refine_error: {type(outcomes).__name__}: {outcomes}")
            return
        for env, outcome in zip(todo, outcomes):
            env["record"] = json.dumps(outcome.row, ensure_ascii=False)
            if outcome.rejected:
                env.update(status="rejected", field=outcome.field, reason=outcome.rejected)


class AsyncRefineStage(RefineStage):
    """A replica with an async engine: Ray Data runs ``__call__`` on the actor's event loop and
    may hand it several batches at once; ``pipeline.max_concurrent_batches`` of them run, all
    sharing the one engine."""

    def _steps(self) -> dict:
        return self.refiner.async_steps()

    def __init__(self, cfg: Config, step: str = "fused"):
        super().__init__(cfg, step)
        # Ray Data overlaps up to 4 batches of a block on its own; this is the bound users set
        self._slots = asyncio.Semaphore(cfg.pipeline.max_concurrent_batches)

    async def __call__(self, batch: pa.Table) -> pa.Table:  # type: ignore[override]
        envelopes, todo, rows = self._open(batch)
        if todo:
            async with self._slots:
                began = self._tick(+1)
                try:
                    outcomes: list[Outcome] | Exception = await self.run(rows)
                except Exception as e:
                    if is_engine_death(e):
                        leave(str(e))
                    outcomes = e
                self._finish(todo, outcomes, began, self._tick(-1))
        return pa.Table.from_pylist(envelopes, schema=ENVELOPE)
