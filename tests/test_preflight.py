"""The first real run must not fail at its first step: the models a config loads are staged from
the config itself, and the driver checks, before any engine starts, that a pod with no hub access
finds them, that the output is writable and that the cluster has the GPUs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from helpers import ROOT, SAMPLES

from arhn_ray.config import load_config
from arhn_ray.model_cache import required_repos

CLUSTER_CONFIGS = sorted(
    p.name for p in (ROOT / "conf").glob("*.yaml") if yaml.safe_load(p.read_text())["engine"].get("device") == "gpu"
)


def named_models(node) -> set[str]:
    """Every model or tokenizer name written in a config file, read independently of the code under test."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("model", "tokenizer") and isinstance(value, str):
                found.add(value)
            else:
                found |= named_models(value)
    return found


def test_there_are_cluster_configs():
    assert CLUSTER_CONFIGS == ["qwen3-32b-a100x16.yaml", "smoke-1gpu.yaml"]


@pytest.mark.parametrize("name", CLUSTER_CONFIGS)
def test_staging_covers_every_model_and_tokenizer_a_cluster_config_names(name):
    cfg = load_config(str(ROOT / "conf" / name))
    staged = {r.name: r for r in required_repos(cfg, evaluate=True)}  # what `arhn-ray stage` downloads
    assert set(staged) == named_models(yaml.safe_load((ROOT / "conf" / name).read_text())) - {"bundled:minilm"}
    assert not staged[cfg.engine.model].tokenizer_only  # the engine needs the weights
    refine = {r.name: r for r in required_repos(cfg)}  # what a refine pod must find
    assert cfg.engine.model in refine and refine[cfg.truncation.tokenizer].tokenizer_only  # E5's tokenizer, not its weights


def test_the_paper_config_needs_qwen_and_e5s_tokenizer():
    cfg = load_config(str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"))
    assert [(r.name, r.use, r.tokenizer_only) for r in required_repos(cfg)] == [
        ("Qwen/Qwen3-32B", "engine.model", False),
        ("intfloat/e5-base-v2", "truncation.tokenizer", True),
    ]
    # a server or a replay loads no model here; a local folder is not the hub's
    served = load_config(
        str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"),
        [
            "engine.kind=openai",
            "engine.async_engine=false",
            "pipeline.max_concurrent_batches=1",
            "engine.base_url=http://x",
            "truncation.tokenizer=/models/e5",
        ],
    )
    assert required_repos(served) == []


def cli(args: list[str], env: dict[str, str], cwd=ROOT, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "arhn_ray", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
    return done, time.monotonic() - started


def offline_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RAY_ADDRESS", "TRANSFORMERS_"))}
    (tmp_path / "hf").mkdir()
    return env | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def test_offline_with_an_empty_cache_the_paper_config_stops_naming_what_to_stage(tmp_path):
    """As a pod whose staging was not done: no hub, an empty cache. The run stops before Ray or any
    engine starts, names both repositories and the command that stages them."""
    out = tmp_path / "out"
    done, took = cli(
        ["-v", "refine", "conf/qwen3-32b-a100x16.yaml", f"input.path={SAMPLES}", f"output.path={out}"], offline_env(tmp_path)
    )
    print(f"stopped after {took:.1f} s")
    assert done.returncode == 4, done.stderr[-3000:]
    assert "intfloat/e5-base-v2 (truncation.tokenizer)" in done.stderr and "Qwen/Qwen3-32B (engine.model)" in done.stderr
    assert (
        "arhn-ray stage conf/qwen3-32b-a100x16.yaml" in done.stderr and "HF_HUB_OFFLINE=1" in done.stderr
    )  # the user's own config
    assert "Traceback" not in done.stderr
    shown = done.stdout + done.stderr
    assert "Started a local Ray instance" not in shown and "ray.init" not in shown and not (out / "refined").exists()


def test_a_staged_cache_passes_the_model_check(tmp_path):
    """The same check passes once the tokenizer is in the cache: the stage writes a snapshot the
    offline lookup finds (put there by hand, as `arhn-ray stage` would, without the network)."""
    from arhn_ray.bundled import minilm_path

    env = offline_env(tmp_path)
    snapshot = tmp_path / "hf" / "hub" / "models--intfloat--e5-base-v2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copytree(minilm_path(), snapshot, dirs_exist_ok=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    done, _ = cli(["stage", "conf/qwen3-32b-a100x16.yaml", "--list"], env)
    assert done.stdout.splitlines() == ["Qwen/Qwen3-32B\tengine.model\tmodel", "intfloat/e5-base-v2\tevaluate.model\tmodel",
                                        "BAAI/bge-reranker-v2-m3\tbaseline.model\tmodel"]  # fmt: skip
    code = (
        "from arhn_ray.config import load_config; from arhn_ray.model_cache import missing_repos; "
        "print([r.name for r in missing_repos(load_config('conf/qwen3-32b-a100x16.yaml'))])"
    )
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
    assert missing.strip() == "['Qwen/Qwen3-32B']"


def test_an_output_that_cannot_be_written_stops_the_run_naming_it(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the output folder should go")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done, _ = cli(["refine", "conf/replay.yaml", f"engine.replay_path={tmp_path}", f"output.path={blocked}/out"], env)
    assert done.returncode == 4, done.stderr[-2000:]
    assert f"output.path {blocked}/out is not writable" in done.stderr


@pytest.mark.ray
def test_missing_gpus_are_named_at_once_and_again_while_waiting_then_the_run_stops(tmp_path):
    """The paper config on this machine (no GPU): the terminal says how many GPUs it needs and how
    many the cluster has, says it again while it waits, and stops after preflight.gpu_wait_s."""
    from arhn_ray.bundled import prepare_model

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}
    args = ["refine", "conf/qwen3-32b-a100x16.yaml", f"input.path={SAMPLES}", f"output.path={tmp_path / 'out'}",
            f"engine.model={prepare_model()}", "truncation.tokenizer=bundled:minilm", "preflight.gpu_wait_s=4", "preflight.poll_s=1"]  # fmt: skip
    done, took = cli(args, env)
    print(f"stopped after {took:.1f} s")
    assert done.returncode == 4, done.stderr[-3000:]
    waiting = [
        line
        for line in done.stderr.splitlines()
        if "needs 16 GPUs (8 replicas x TP 2 x PP 1); the cluster has 0: waiting" in line
    ]
    assert len(waiting) >= 2, done.stderr
    assert "preflight.gpu_wait_s=0 fails instead" in waiting[0]
    assert (
        "arhn-ray: preflight: the job needs 16 GPUs (8 replicas x TP 2 x PP 1); the cluster has 0. Add GPU nodes" in done.stderr
    )
    assert "Traceback" not in done.stderr and not list((tmp_path / "out").glob("refined/*/*.parquet"))
