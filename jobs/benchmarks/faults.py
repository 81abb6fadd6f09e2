"""A multi-node Ray cluster on this machine that loses nodes mid-run: nothing lost, nothing doubled.

A head (no CPUs: it holds the driver, as a KubeRay head pod does) and two worker nodes of one CPU
each, as separate raylets (``ray.cluster_utils.Cluster``); the replicas can only run on the
workers. The job is submitted as users submit it (``ray job submit``) against a loopback
OpenAI-compatible server that answers after ``--delay`` seconds and counts every call (the LLM is
not what is measured). Each case, one after the other on the same cluster:

- ``none``: no fault, the reference;
- ``replace``: a worker node's raylet killed once the first part is written, a new node joins;
- ``lost``: a worker node killed the same way, no node joins: the job ends on what is left;
- ``early``: a worker node killed before any part is written (once the replicas have taken their
  first calls), no node joins: the job ends on what is left;
- ``start``: a worker node killed while the replicas start (the parts planned, no call answered),
  no node joins;
- ``retry``: a worker killed mid-way and a node joins, then the other original worker killed once
  the retry has begun: the job goes on on the new node (a third attempt);
- ``late``: a worker killed after 400 calls, none joins (the issue's 1,500-row setup);
- ``early-kept``: ``early`` with ``pipeline.end_failed_replicas=false``: the failed attempt's
  replicas are left to Ray Data, as before; its stall beside ``early``'s is what ending them saves;
- ``gone``: both workers killed, none joins: the job stops within ``pipeline.replica_wait_s``
  (20 s here) naming what happened, then nodes join and the same submission goes on;
- ``head``: the whole cluster killed (as KubeRay loses its head), the job submitted again on a
  fresh cluster: it resumes from the finished parts.

The worker lost is one whose replica has answered batches (its pid on the run's log, its node
from Ray's state API): on a loaded machine the other replica may be up but idle, and losing it
fails nothing.

Prints a table: case, rows in, refined, rejected, lost (must be 0), doubled (must be 0), LLM calls
per row, wall time, the stall (seconds from the fault to the next part written: the time the run
made no progress) and the job's status; ``--json`` prints the rows as JSON (tests read it).

    python jobs/benchmarks/faults.py [--rows 60] [--cases none,replace,lost,early,early-kept,start,retry,gone,head] [--delay 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale import ROOT, FakeLLM, make_layout, serve  # noqa: E402

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SlowLLM(FakeLLM):
    delay_s = 1.0

    def do_POST(self):  # noqa: N802
        time.sleep(SlowLLM.delay_s)
        try:
            super().do_POST()
        except (BrokenPipeError, ConnectionResetError):  # the caller's node was removed: the call is lost with it
            pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> dict[str, int]:
    """Ports of a node's agents of its own: on one machine every node would take the same defaults
    (the dashboard agent's 52365), and the node that loses the race has no agent (the head's takes
    the job submissions)."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_agent_port": free_port(), "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port()}  # fmt: skip


def start_cluster(workers: int = 2, attempts: int = 3):
    """Ray waits a fixed 30 s for a new raylet to register; on a loaded two-core machine (a CI run
    with another Ray session up) a head has missed it once. Such a start is retried on fresh
    ports, with what it spawned killed first."""
    import psutil
    from ray.cluster_utils import Cluster

    for attempt in range(1, attempts + 1):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        dashboard, cluster = free_port(), Cluster(initialize_head=False, connect=False)
        try:
            cluster.add_node(num_cpus=0, include_dashboard=True, dashboard_port=dashboard, **node_ports())
            nodes = [add_worker(cluster) for _ in range(workers)]
            return cluster, nodes, f"http://127.0.0.1:{dashboard}"
        except Exception as error:
            if attempt == attempts or "timed out during startup" not in str(error):
                raise
            print(f"a node missed Ray's startup wait (attempt {attempt}); starting the cluster again", file=sys.stderr)
            cluster.shutdown()
            for child in psutil.Process().children(recursive=True):
                if child.pid not in before:
                    child.kill()


def add_worker(cluster):
    return cluster.add_node(num_cpus=1, **node_ports())


def submit(dashboard: str, data: Path, out: Path, url: str, batch: int, *extra: str) -> str:
    """``ray job submit`` as a user types it; returns the submission id."""
    job = f"arhn-faults-{uuid.uuid4().hex[:8]}"
    entry = [sys.executable, "-m", "arhn_ray", "refine", str(ROOT / "conf" / "openai-endpoint.yaml"), f"input.path={data}",
             f"output.path={out}", f"engine.base_url={url}", "engine.api_key_env=null", "engine.model=fake", "engine.replicas=2",
             "input.part_rows=10", f"pipeline.batch_size={batch}", *extra]  # fmt: skip
    for _ in range(60):  # a new head's dashboard agent takes a few seconds to take jobs
        done = subprocess.run(["ray", "job", "submit", "--address", dashboard, "--submission-id", job, "--no-wait", "--", *entry],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
        if not done.returncode:
            return job
        if "No available agent" not in done.stderr + done.stdout and "onnect" not in done.stderr:
            break
        time.sleep(2)
    raise RuntimeError(f"ray job submit failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def wait(dashboard: str, job: str, timeout_s: float, on_tick=None) -> str:
    from ray.job_submission import JobSubmissionClient

    client, deadline = JobSubmissionClient(dashboard), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = str(client.get_job_status(job)).split(".")[-1]
        except Exception:  # the head is gone (the head case kills it on purpose)
            return "LOST"
        if status in TERMINAL:
            return status
        if on_tick and on_tick():
            return "KILLED"
        time.sleep(0.3)
    return "TIMEOUT"


def job_logs(dashboard: str, job: str) -> str:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(dashboard).get_job_logs(job)
    except Exception:
        return ""


def written_parts(out: Path) -> int:
    return len(list((out / "_parts").glob("*/*.json"))) if (out / "_parts").exists() else 0


def rows_out(out: Path) -> Counter:
    import pyarrow.parquet as pq

    ids: Counter = Counter()
    for kind in ("refined", "rejected"):
        for f in sorted((out / kind).glob("*/*.parquet")):
            ids.update(pq.read_table(f, columns=["query_id"]).column(0).to_pylist())
    return ids


def measure(case: str, out: Path, rows: int, calls: int, started: float, status: str, logs: str) -> dict:
    ids = rows_out(out)
    expected = {f"msmarco-{i}" for i in range(rows)}
    import pyarrow.parquet as pq

    refined = sum(pq.read_metadata(f).num_rows for f in (out / "refined").glob("*/*.parquet"))
    return {"case": case, "rows_in": rows, "refined": refined, "rejected": sum(ids.values()) - refined,
            "lost": len(expected - set(ids)), "doubled": sum(n - 1 for n in ids.values() if n > 1),
            "calls_per_row": round(calls / rows, 3), "wall_s": round(time.monotonic() - started, 1), "status": status,
            "retries": logs.count("run on the nodes left"), "stopped": logs.count("no node left can hold a replica"), "ended": logs.count("replicas of attempt")}  # fmt: skip


def run_log(out: Path) -> str:
    """The run's own log (the replicas' lines go there, not to the job's screen)."""
    return (
        "".join(f.read_text(errors="replace") for f in sorted((out / "logs").glob("refine-*.log")))
        if (out / "logs").exists()
        else ""
    )


def busy_nodes(dashboard: str, log: str) -> set[str]:
    """Ids of the nodes whose replica has answered batches (its pid on the job's log). On a loaded
    machine a replica can be up but not yet given work when the fault comes: Ray Data drops such
    an idle replica quietly, nothing fails, and the case would not test a retry."""
    from ray.util.state import list_actors

    pids = {int(p) for p in re.findall(r"RefineStage\)\) pid=(\d+)\).*? rows in ", log)}
    if not pids:
        return set()
    try:
        actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000, timeout=20)
    except Exception:  # the state API is slow under load: asked again at the next tick
        return set()
    return {a.node_id for a in actors if a.pid in pids and "RefineStage" in (a.class_name or "")}


def make_fault(case: str, out: Path, cluster, nodes: list, started: float, logs=lambda: "", dashboard: str = ""):
    """The case's fault, done once the first part is written (the run is mid-way; ``early``: once
    the replicas have taken 4 calls, before any part is written; ``start``: once the job has planned
    its parts and no call is answered, while the replicas start; ``retry``: a worker lost mid-way
    with a node joining, then the other original worker lost once the retry has begun). Returns the
    poll function for :func:`wait` (True: the cluster is gone) and a dict with the fault's time and
    the stall: the longest time from the fault to the end without a new part written."""
    seen = {"fault_at_s": None, "stall_s": 0.0, "parts": 0, "since": 0.0, "second": False, "armed": False}

    def fault() -> bool:
        now, parts = time.monotonic() - started, written_parts(out)
        if seen["fault_at_s"] is not None:
            seen["stall_s"] = max(seen["stall_s"], now - seen["since"])
            if parts > seen["parts"]:
                seen["parts"], seen["since"] = parts, now
            if case == "retry" and not seen["second"] and "attempt 2 of" in logs():
                seen["second"] = True  # the retry has begun: the other original worker goes too
                cluster.remove_node(nodes.pop(0), allow_graceful=False)
            return False
        if case.startswith("early"):
            ready = FakeLLM.calls >= 4 and parts == 0
        elif case == "late":  # the setup: a worker lost after ~400 calls, none joins
            ready = FakeLLM.calls >= 400
        elif case == "start":
            ready = FakeLLM.calls == 0 and "parts to refine" in logs()
        else:
            ready = parts >= 1
        seen["armed"] = ready = ready or seen["armed"]  # kept while a replica's node is looked up
        if not ready or case not in ("replace", "lost", "early", "early-kept", "start", "retry", "late", "head", "gone"):
            return False
        targeted = case not in ("start", "head", "gone")  # these lose a node whatever its replica does
        busy = [n for n in nodes if n.node_id in busy_nodes(dashboard, run_log(out))] if targeted else []
        if targeted and not busy:
            return False  # no replica has taken work yet: its loss would fail nothing
        seen.update(fault_at_s=now, parts=parts, since=now)
        if case == "head":
            return True
        for _ in range(len(nodes) if case == "gone" else 1):
            node = busy[0] if busy else nodes[0]  # a node whose replica is taking calls
            nodes.remove(node)
            cluster.remove_node(node, allow_graceful=False)
        if case in ("replace", "retry"):
            nodes.append(add_worker(cluster))
        return False

    return fault, seen


def run_cases(cases: list[str], rows: int, delay_s: float, tmp: Path, timeout_s: float = 600) -> list[dict]:
    SlowLLM.delay_s = delay_s
    server, url = serve(SlowLLM)
    data = tmp / "in"
    make_layout(data, rows, {"msmarco": 1.0})
    results = []
    cluster, nodes, dashboard = start_cluster()
    try:
        for case in cases:
            out = tmp / f"out-{case}"
            FakeLLM.calls, started = 0, time.monotonic()
            extra = {"gone": ["pipeline.replica_wait_s=20"], "early-kept": ["pipeline.end_failed_replicas=false"]}.get(case, [])
            job = submit(dashboard, data, out, url, 2, *extra)
            fault, seen = make_fault(case, out, cluster, nodes, started, lambda d=dashboard, j=job: job_logs(d, j), dashboard)

            status = wait(dashboard, job, timeout_s, fault)
            logs = job_logs(dashboard, job)
            if case == "head":
                cluster.shutdown()  # the head and every node with it
                cluster, nodes, dashboard = start_cluster()
                job = submit(dashboard, data, out, url, batch=2)
                status = wait(dashboard, job, timeout_s)
                logs += job_logs(dashboard, job)
            if case == "gone":  # stopped, not hung: nodes come back and the same submission goes on
                first = status
                nodes.extend(add_worker(cluster) for _ in range(2))
                job = submit(dashboard, data, out, url, batch=2)
                status = f"{first}, then {wait(dashboard, job, timeout_s)}"
                logs += job_logs(dashboard, job)
            results.append(
                measure(case, out, rows, FakeLLM.calls, started, status, logs)
                | {
                    "fault_at_s": None if seen["fault_at_s"] is None else round(seen["fault_at_s"], 1),
                    "stall_s": None if seen["fault_at_s"] is None else round(seen["stall_s"], 1),
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            if os.environ.get("ARHN_FAULTS_LOGS"):  # the job's own log, to read where a stall went
                Path(os.environ["ARHN_FAULTS_LOGS"], f"{case}.log").write_text(logs)
                for n, f in enumerate(sorted((out / "logs").glob("*.log"))):
                    shutil.copy(f, Path(os.environ["ARHN_FAULTS_LOGS"], f"{case}-run{n}.log"))
            while len(nodes) < 2:  # back to two workers for the next case
                nodes.append(add_worker(cluster))
    finally:
        cluster.shutdown()
        server.shutdown()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--cases", default="none,replace,lost,early,early-kept,start,retry,gone,head")
    ap.add_argument("--delay", type=float, default=1.0, help="seconds the fake LLM takes a call")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    tmp = Path(tempfile.mkdtemp(prefix="arhn-bench-faults-"))
    try:
        results = run_cases(args.cases.split(","), args.rows, args.delay, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"\n{'case':<8} {'rows in':>7} {'refined':>7} {'rejected':>8} {'lost':>4} {'doubled':>7} {'calls/row':>9} {'wall s':>7} {'stall s':>7} {'retries':>7}  status"
    )
    for r in results:
        print(f"{r['case']:<8} {r['rows_in']:>7} {r['refined']:>7} {r['rejected']:>8} {r['lost']:>4} {r['doubled']:>7} "
              f"{r['calls_per_row']:>9} {r['wall_s']:>7} {str(r['stall_s']):>7} {r['retries']:>7}  {r['status']}")  # fmt: skip


if __name__ == "__main__":
    main()
