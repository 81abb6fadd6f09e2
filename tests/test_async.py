"""The async path (``engine.async_engine``): the same rows as the blocking path, a row's Stage 2
going out while other rows are still in Stage 1, overlapping batches counted once, and the
Ray job with overlapping batches on a real local cluster (replay engine)."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import ROOT, ScriptedEngine, blocks, make_row
from test_pipeline import dataset, read_dir, replay_config

from arhn_ray.config import ConfigError, load_config
from arhn_ray.method import labeling as lb
from arhn_ray.method.prompts import PromptSet
from arhn_ray.pipeline.job import run
from arhn_ray.pipeline.stages import RefineStage
from arhn_ray.refiners.arhn import ArhnRefiner, Outcome

PROMPTS = PromptSet.load()
ANCHOR = "X is a letter."


def script(req):
    qid, stage, chunk = req.key
    if qid == "broken":
        return RuntimeError("HTTP 500")
    if stage == 1:
        n = 10 if chunk == 0 and qid == "wide" else 2
        return blocks([ANCHOR] + [f"Negative passage number {i}." if i % 2 == 0 else None for i in range(n)])
    return "[2] > [1]" if qid.endswith("1") else "[1] > [2] > [3]"


def rows():
    return [make_row(2, qid="r0"), make_row(3, qid="r1"), make_row(12, qid="wide"), make_row(1, qid="broken")]


@pytest.mark.parametrize("options", [{}, {"variant": "relabel"}, {"paper_literal": True}])
def test_arefine_gives_what_refine_gives(options):
    sync = ArhnRefiner(ScriptedEngine(script), lb.MethodOptions(**options), PROMPTS, retries=1).refine(rows())
    engine = ScriptedEngine(script)
    asyn = asyncio.run(ArhnRefiner(engine, lb.MethodOptions(**options), PROMPTS, retries=1).arefine(rows()))
    assert [(o.row, o.rejected, o.field) for o in asyn] == [(o.row, o.rejected, o.field) for o in sync]
    assert asyn[3].rejected.startswith("engine_error: stage 1 chunk 0")
    assert sum(r.key == ("broken", 1, 0) for r in engine.requests) == 2  # one try, one retry


def test_astage1_then_astage2_gives_what_the_staged_pipeline_gives():
    refiner = ArhnRefiner(ScriptedEngine(script), lb.MethodOptions(), PROMPTS)
    want = refiner.stage2([o.row for o in refiner.stage1(rows()[:3])])

    async def staged():
        first = await refiner.astage1(rows()[:3])
        return await refiner.astage2([o.row for o in first])

    got = asyncio.run(staged())
    assert [o.row for o in got] == [o.row for o in want]


def test_a_rows_stage2_goes_out_while_another_row_is_still_in_stage1():
    """Row "slow" answers Stage 1 only once row "fast" has sent its Stage 2 request: a
    batch-at-a-time driver would wait on "slow" forever and time out."""
    engine = ScriptedEngine(lambda r: blocks([ANCHOR, "Negative passage number 0."]) if r.key[1] == 1 else "[1] > [2]")
    fast_in_stage2 = asyncio.Event()

    async def gate(req):
        if req.key == ("fast", 2, 0):
            fast_in_stage2.set()
        if req.key == ("slow", 1, 0):
            await fast_in_stage2.wait()

    engine.gate = gate
    refiner = ArhnRefiner(engine, lb.MethodOptions(), PROMPTS)
    outs = asyncio.run(asyncio.wait_for(refiner.arefine([make_row(1, qid="slow"), make_row(1, qid="fast")]), 30))
    assert [o.row["query_id"] for o in outs] == ["slow", "fast"] and all(o.rejected is None for o in outs)
    order = [r.key for r in engine.requests]
    assert order.index(("fast", 2, 0)) < order.index(("slow", 1, 0))


def test_overlapping_batches_count_the_replicas_busy_time_once(monkeypatch):
    clock = iter([0.0, 2.0, 5.0, 10.0, 20.0, 21.0])  # A starts, B starts, B ends, A ends, C starts, C ends
    monkeypatch.setattr("arhn_ray.pipeline.stages.time.perf_counter", lambda: next(clock))
    stage = RefineStage.__new__(RefineStage)
    stage._active, stage._last, stage._busy, stage._charged = 0, 0.0, 0.0, 0.0
    assert stage._tick(+1) == 0.0 and stage._tick(+1) == 2.0  # a start gives its time
    shares = [stage._tick(-1), stage._tick(-1), stage._tick(+1), stage._tick(-1)]
    assert shares[:2] == [5.0, 5.0] and shares[3] == 1.0  # 10 s busy for A and B together, then 1 s for C


def test_a_replica_runs_at_most_max_concurrent_batches_at_once(tmp_path):
    """Ray Data hands an async replica up to 4 batches of a block at once; the replica runs
    ``pipeline.max_concurrent_batches`` of them and queues the rest."""
    import pyarrow as pa

    from arhn_ray.data.parts import Part
    from arhn_ray.pipeline.stages import ENVELOPE, AsyncRefineStage, envelope

    (tmp_path / "rec.jsonl").write_text("")
    overrides = ["input.path=x", "output.path=y", f"engine.replay_path={tmp_path / 'rec.jsonl'}",
                 "engine.async_engine=true", "pipeline.max_concurrent_batches=2"]  # fmt: skip
    stage = AsyncRefineStage(load_config(str(ROOT / "conf" / "replay.yaml"), overrides))
    running, peak = 0, 0

    async def arefine(rows):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(5):
            await asyncio.sleep(0)
        running -= 1
        return [Outcome(row) for row in rows]

    stage.run = arefine
    batches = [
        pa.Table.from_pylist([envelope(Part("s.jsonl", "jsonl", 0, 1, None, 6, 6), i, make_row(1, qid=f"q{i}"))], schema=ENVELOPE)
        for i in range(6)
    ]

    async def all_at_once():
        return await asyncio.gather(*(stage(b) for b in batches))

    outs = asyncio.run(all_at_once())
    assert peak == 2
    assert [t.to_pylist()[0]["status"] for t in outs] == ["ok"] * 6


def test_a_replica_stops_its_engine_when_ray_data_drops_it(tmp_path):
    import gc

    (tmp_path / "rec.jsonl").write_text("")
    overrides = ["input.path=x", "output.path=y", f"engine.replay_path={tmp_path / 'rec.jsonl'}"]
    stage = RefineStage(load_config(str(ROOT / "conf" / "replay.yaml"), overrides))
    closed = []
    stage.refiner.engine.close = lambda: closed.append(True)
    del stage
    gc.collect()
    assert closed == [True]


def test_config_refuses_async_where_it_cannot_work(tmp_path):
    base = ["input.path=x", "output.path=y"]
    with pytest.raises(ConfigError, match="pipeline.max_concurrent_batches"):
        load_config(None, [*base, "pipeline.max_concurrent_batches=2"])
    with pytest.raises(ConfigError, match="engine.async_engine"):
        load_config(None, [*base, "engine.kind=openai", "engine.base_url=http://h", "engine.async_engine=true"])
    assert load_config(None, [*base, "engine.async_engine=true", "pipeline.max_concurrent_batches=4"]).engine.async_engine


@pytest.mark.ray
@pytest.mark.parametrize("mode", ["fused", "staged"])
def test_async_job_gives_the_same_rows_as_the_blocking_one(ray_cluster, tmp_path, mode):
    data, recordings, _ = dataset(tmp_path)
    blocking, asyn = tmp_path / "blocking", tmp_path / "async"
    run(replay_config(data, recordings, blocking, "pipeline.batch_size=1"))
    extra = ["pipeline.batch_size=1", "engine.async_engine=true", "pipeline.max_concurrent_batches=3", f"pipeline.mode={mode}"]
    stats = run(replay_config(data, recordings, asyn, *extra))
    key = lambda r: r["query_id"]  # noqa: E731
    assert sorted(read_dir(asyn / "refined"), key=key) == sorted(read_dir(blocking / "refined"), key=key)
    assert [json.loads(r["row"])["query_id"] for r in read_dir(asyn / "rejected")] == ["bad"]
    assert stats["overall"]["queries"] == 3 and stats["replica_time"]["engine_s"] > 0


def test_the_async_engine_holds_at_most_max_inflight_requests_at_once():
    """Overlapping batches no longer flood the engine: the replica holds what is past the bound."""
    from arhn_ray.engines.vllm_engine import AsyncVLLMEngine, inflight_bound

    assert inflight_bound(256) == 282 and inflight_bound(160) == 176 and inflight_bound(1) == 2
    running, peak = 0, 0

    class FakeLLM:
        async def generate(self, prompt, sampling, request_id):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            yield prompt

    class Beat:
        def beat(self):
            pass

    engine = AsyncVLLMEngine.__new__(AsyncVLLMEngine)
    engine.llm, engine.watchdog, engine._ids = FakeLLM(), Beat(), iter(range(1000))

    async def main():
        engine._inflight = asyncio.Semaphore(5)
        return await asyncio.gather(*(engine._one({"i": i}, None) for i in range(40)))

    outs = asyncio.run(main())
    assert peak == 5 and [o["i"] for o in outs] == list(range(40))


def test_preemptions_are_read_from_vllms_counter_and_reach_the_stats_and_summary():
    from prometheus_client import CollectorRegistry, Counter

    from arhn_ray.cli import summary
    from arhn_ray.engines.vllm_engine import preemptions
    from arhn_ray.outputs.stats import RunStats

    registry = CollectorRegistry()
    assert preemptions(registry) is None  # an engine that exposes none
    counter = Counter("vllm:num_preemptions", "preempted requests", registry=registry)
    counter.inc(3)
    assert preemptions(registry) == 3
    st = RunStats()
    st.add_timing(1.0, 0.0, 3)
    st.add_timing(1.0, 0.0, None)
    data = st.to_dict()
    assert data["preemptions"] == 3 and RunStats.from_dict(data).to_dict()["preemptions"] == 3
    assert "preemptions   3" in summary(data, "out")
    assert "preemptions" not in RunStats().to_dict()
