"""A latency model for the replay engine: what only a GPU shows, simulated at a stated rate.

Each request is held as an engine of ``max_num_seqs`` sequence slots would hold it:
``prompt_tokens / prefill_tokens_per_s + output_tokens / decode_tokens_per_s`` seconds (its
recorded token counts), times ``time_scale`` so that hours run in minutes; at most
``max_num_seqs`` requests run at once and the rest queue. Every change of the number in flight
is traced, so a benchmark can tell how full the engine was kept (jobs/benchmarks/inflight.py).

What it assumes, and does not model: a sequence's speed does not depend on how many run beside
it (vLLM's decode step slows as the batch grows; prefill competes with decode), and the KV cache
holds ``max_num_seqs`` sequences whatever their length.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass


@dataclass
class LatencyModel:
    prefill_tokens_per_s: float = 4000.0
    decode_tokens_per_s: float = 25.0
    max_num_seqs: int = 256
    time_scale: float = 0.05
    trace_dir: str | None = None

    def seconds(self, prompt_tokens: int, output_tokens: int) -> float:
        return (prompt_tokens / self.prefill_tokens_per_s + output_tokens / self.decode_tokens_per_s) * self.time_scale


class SlotEngine:
    """The slots of one simulated engine, shared by every call of one replica (sync or async)."""

    def __init__(self, model: LatencyModel):
        self.model = model
        self.in_flight = 0
        self.trace: list[tuple[float, int]] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._file = None
        if model.trace_dir:
            os.makedirs(model.trace_dir, exist_ok=True)
            self._file = open(os.path.join(model.trace_dir, f"replica-{os.getpid()}.jsonl"), "a")

    async def hold(self, prompt_tokens: int, output_tokens: int) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # one per event loop: a blocking replica runs each batch on a new one
            self._slots, self._loop = asyncio.Semaphore(self.model.max_num_seqs), loop
        async with self._slots:  # type: ignore[union-attr]
            self._count(+1)
            try:
                await asyncio.sleep(self.model.seconds(prompt_tokens, output_tokens))
            finally:
                self._count(-1)

    def _count(self, change: int) -> None:
        self.in_flight += change
        self.trace.append((time.time(), self.in_flight))
        if self._file is not None and len(self.trace) >= 512:
            self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.write("".join(json.dumps(point) + "\n" for point in self.trace))
            self._file.flush()
        self.trace.clear()
