import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import os
import socket
import subprocess
import time

import pytest
from helpers import PER_FILE, ROOT, run_in_terminal

NODE_API_KEY_ENV, NODE_API_KEY = "ARHN_TEST_API_KEY", "sk-live-should-not-leak-7f3a"
RAY_TMP = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
# the configs' paths (conf/..., arhn_ray/samples) are the repository's, as the README runs them: the
# suite runs from the repository root wherever pytest was started (`cd tests && pytest`, an IDE, CI);
# no test reads or writes the configs' default outputs (out/...): each names its own tmp_path
os.chdir(ROOT)


def _ray_sessions() -> set[str]:
    """Every local Ray cluster started on this machine leaves a session folder, whichever process started it."""
    return {p.name for p in RAY_TMP.glob("session_2*")} if RAY_TMP.is_dir() else set()


def _started_here(session: str) -> bool:
    """The folder's name ends with the starting process's pid: this test run's, or a process of it
    (one that has exited too, which cannot be told from another run's)."""
    import psutil

    pid = int(session.rsplit("_", 1)[-1])
    if pid == os.getpid():
        return True
    try:
        return os.getpid() in {p.pid for p in psutil.Process(pid).parents()}
    except psutil.Error:
        return True


def _vllm_processes() -> set[int]:
    import psutil

    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("VLLM") or any("VLLM::" in part for part in proc.cmdline()[:1]):
                found.add(proc.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def tier_guard(request):
    """The markers are the tiers: a test that starts Ray without ``ray``, or imports vLLM or starts
    an engine without ``vllm``, fails here, so ``-m "not vllm and not ray"`` starts neither."""
    marks = {m.name for m in request.node.iter_markers()}
    sessions, had_vllm, engines = _ray_sessions(), "vllm" in sys.modules, _vllm_processes()
    yield
    wrong = []
    # a session or module fixture starts Ray before this snapshot: asking for one is starting it
    if "ray" not in marks and {"ray_cluster", "readme_run"} & set(request.fixturenames):
        wrong.append("uses a fixture that starts Ray without the 'ray' marker")
    if "ray" not in marks and any(_started_here(s) for s in _ray_sessions() - sessions):
        wrong.append("started a Ray cluster without the 'ray' marker")
    if "vllm" not in marks and ((not had_vllm and "vllm" in sys.modules) or _vllm_processes() - engines):
        wrong.append("imported vLLM or started an engine without the 'vllm' marker")
    if wrong:
        pytest.fail(f"{request.node.nodeid}: " + "; ".join(wrong), pytrace=False)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session. It declares 16 GPUs (none real) so that the
    paper's placement (8 replicas x TP 2) can be scheduled; CPU engines ask for CPUs only."""
    import ray

    # the nodes' environment holds an API key, as a cluster's does (tests/test_reliability.py's secrets test)
    os.environ.setdefault(NODE_API_KEY_ENV, NODE_API_KEY)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=24, num_gpus=16, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback; yields s3fs storage options."""
    port = free_port()
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    options = {
        "key": "testing-key-id",
        "secret": "testing-secret-value",
        "client_kwargs": {"endpoint_url": url, "region_name": "us-east-1"},
    }
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield options
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory):
    """The README's main command, once for the session: `jobs/install-cpu.sh` (without --test) into a
    new virtualenv, then `arhn-ray refine conf/local.yaml` at an 80-column terminal, on the first
    PER_FILE queries of each sample file. The run's output and everything its terminal showed; the
    tests that read a real engine's output share it (tests/test_local_run.py, the notebook's replay)."""
    tmp = tmp_path_factory.mktemp("local")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(venv), ARHN_RAY_CACHE=str(tmp / "cache"))
    install = subprocess.run(["bash", "jobs/install-cpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    out = tmp / "out"
    cmd = [str(venv / "bin" / "arhn-ray"), "refine", "conf/local.yaml", f"output.path={out}", f"input.limit={PER_FILE}"]
    code, screen = run_in_terminal(cmd, env, columns=80, timeout=3000)
    assert code == 0, screen[-3000:]
    return out, screen  # all the terminal shows


def create_bucket(s3_options: dict, name: str) -> None:
    """A bucket on the loopback S3 server of ``s3_server``."""
    import boto3

    ck = s3_options["client_kwargs"]
    boto3.client("s3", endpoint_url=ck["endpoint_url"], region_name=ck["region_name"],
                 aws_access_key_id=s3_options["key"], aws_secret_access_key=s3_options["secret"]).create_bucket(Bucket=name)  # fmt: skip
