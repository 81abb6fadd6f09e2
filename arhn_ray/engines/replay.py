"""Serve recorded outputs, so that a run is reproducible without an LLM.

Recordings are JSONL rows ``{"query_id", "stage" (1 or 2), "chunk" (0-based), "text"}`` (optionally
``prompt_tokens``, ``output_tokens``, ``finish_reason``) or a previous run's output folder (its
``refined/`` rows carry every LLM output in ``llm``). A request with no recording gets an error result.
"""

from __future__ import annotations

import asyncio
import json
import time

from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.readers import filesystem
from arhn_ray.engines.base import ChatRequest, ChatResult
from arhn_ray.engines.latency import LatencyModel, SlotEngine


def load_recordings(path: str, storage_options: dict | None = None) -> dict[tuple[str, int, int], dict]:
    fs, root = filesystem(path, storage_options)
    table: dict[tuple[str, int, int], dict] = {}
    if fs.isdir(root):
        for row in OutputLayout(path, storage_options).read_rows("refined", columns=["query_id", "llm"]):
            for call in row["llm"] or []:
                for stage in (1, 2):
                    text = call[f"stage{stage}_text"]
                    if text is not None:
                        table[(row["query_id"], stage, call["chunk"])] = {
                            "text": text,
                            "prompt_tokens": call[f"stage{stage}_prompt_tokens"] or 0,
                            "output_tokens": call[f"stage{stage}_output_tokens"] or 0,
                            "finish_reason": call.get(f"stage{stage}_finish_reason") or "stop",
                        }
        return table
    with fs.open(root, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            try:
                key = (str(rec["query_id"]), int(rec["stage"]), int(rec["chunk"]))
                table[key] = {
                    "text": rec["text"],
                    "prompt_tokens": rec.get("prompt_tokens", 0),
                    "output_tokens": rec.get("output_tokens", 0),
                    "finish_reason": rec.get("finish_reason", "stop"),
                }
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}: line {n}: expected query_id, stage, chunk and text ({e})") from e
    return table


class ReplayEngine:
    """``delay_s`` adds a fixed latency per batch, to stand in for an engine in pipeline benchmarks
    and fault tests; ``latency`` holds each request for the time its recorded tokens would take
    (engines/latency.py), in at most ``max_num_seqs`` slots."""

    def __init__(
        self,
        path: str,
        model: str = "replay",
        storage_options: dict | None = None,
        delay_s: float = 0.0,
        latency: LatencyModel | None = None,
    ):
        self.model = model
        self.delay_s = delay_s
        self.recordings = load_recordings(path, storage_options)
        self.slots = SlotEngine(latency) if latency else None

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if self.delay_s:
            time.sleep(self.delay_s)
        results = self._lookup(requests)
        if self.slots:  # a blocking call: the batch ends when its slowest request ends
            asyncio.run(self._hold(results))
        return results

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """The same lookup; the delay is awaited, so concurrent calls overlap as in an async engine."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        results = self._lookup(requests)
        if self.slots:
            await self._hold(results)
        return results

    async def _hold(self, results: list[ChatResult]) -> None:
        await asyncio.gather(*(self.slots.hold(r.prompt_tokens, r.output_tokens) for r in results if not r.error))  # type: ignore[union-attr]

    def _lookup(self, requests: list[ChatRequest]) -> list[ChatResult]:
        out = []
        for req in requests:
            rec = self.recordings.get(req.key)
            if rec is None:
                out.append(ChatResult.failed(f"no recording for query_id={req.key[0]!r} stage={req.key[1]} chunk={req.key[2]}"))
            else:
                out.append(ChatResult(rec["text"], rec["prompt_tokens"], rec["output_tokens"], rec["finish_reason"]))
        return out

    def close(self) -> None:
        if self.slots:
            self.slots.flush()
