"""An engine from the config, and its start, retried, each attempt under a deadline (engines/lifecycle.py).

A replica that Ray restarts after its engine died starts a new engine at once, while the old
engine's GPU memory may not be free yet; Ray does not retry an actor's constructor, so a start
that fails there would end the job. The start is retried here instead, a bounded number of
times with growing waits (``engine.start_attempts``, ``engine.start_retry_wait_s``).
"""

from __future__ import annotations

import logging

from tenacity import Retrying, stop_after_attempt, wait_exponential

from arhn_ray.engines import lifecycle
from arhn_ray.engines.base import AsyncEngine, Engine
from arhn_ray.engines.options import EngineConfig

log = logging.getLogger(__name__)


def make_engine(engine: EngineConfig) -> Engine | AsyncEngine:
    if engine.kind == "replay":
        from arhn_ray.engines.latency import LatencyModel
        from arhn_ray.engines.replay import ReplayEngine

        latency = LatencyModel(**engine.replay_latency) if engine.replay_latency else None
        return ReplayEngine(engine.replay_path or "", model=engine.model or "replay", storage_options=dict(engine.replay_storage_options),
                            delay_s=engine.replay_delay_s, latency=latency)  # fmt: skip
    if engine.kind == "openai":
        from arhn_ray.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(engine)
    from arhn_ray.engines.vllm_engine import AsyncVLLMEngine, VLLMEngine

    return (AsyncVLLMEngine if engine.async_engine else VLLMEngine)(engine)


def start_engine(engine: EngineConfig) -> Engine | AsyncEngine:
    """``make_engine``, tried up to ``engine.start_attempts`` times, waits doubling from ``start_retry_wait_s``."""

    def failed(state) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        reason = f"{type(state.outcome.exception()).__name__}: {state.outcome.exception()}"
        message = (
            f"engine start failed (attempt {state.attempt_number} of {engine.start_attempts}): {reason}; again in {wait:.0f} s"
        )
        log.warning("%s", message)
        print(f"arhn-ray replica: {message}", flush=True)  # the replica's log, where a restart is looked for

    retrying = Retrying(
        stop=stop_after_attempt(max(1, engine.start_attempts)),
        wait=wait_exponential(
            multiplier=engine.start_retry_wait_s, min=engine.start_retry_wait_s, max=engine.start_retry_wait_s * 8
        ),
        before_sleep=failed,
        reraise=True,
    )
    # each attempt under engine.start_timeout_s: a load that hangs (GPUs a predecessor still holds) ends the replica
    return retrying(lambda: lifecycle.start(lambda: make_engine(engine), engine.start_timeout_s))
