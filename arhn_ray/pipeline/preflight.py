"""Checks on the driver, in seconds, before any engine starts: what would otherwise fail only after
minutes of loading a 32B model on every GPU, or wait in silence.

- every model and tokenizer the config loads is in the Hugging Face cache when the hub is offline
  (``HF_HUB_OFFLINE=1``, as on the cluster's pods);
- the output is writable (the input's readability is planning's: an unreadable file is named there);
- the cluster has the GPUs the replicas need: if not, the terminal says so at once and again while
  it waits, or the run stops (``preflight.gpu_wait_s``).

Each failure names what is missing and how to fix it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

from arhn_ray.config import Config, EngineConfig, PreflightConfig
from arhn_ray.data.layout import OutputLayout
from arhn_ray.model_cache import missing_repos
from arhn_ray.pipeline.placement import gpus_per_replica, use_gpus

log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """The run cannot start; the message says what is missing and how to fix it."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_models(cfg: Config, config_path: str | None = None) -> None:
    """Offline: every required repository is in the cache. Online: a missing one is only announced,
    since every replica would download it at start."""
    missing = missing_repos(cfg)
    if not missing:
        return
    names = ", ".join(f"{r.name} ({r.use})" for r in missing)
    fix = f"arhn-ray stage {config_path or 'CONFIG'}" + " (with the same HF_HOME; on KubeRay: jobs/kuberay/stage-model.yaml)"
    if hub_offline():
        raise PreflightError(
            f"not in the Hugging Face cache ({_cache()}) and the hub is offline (HF_HUB_OFFLINE=1): {names}. Stage them first: {fix}"
        )
    log.warning(
        "not in the Hugging Face cache, so every replica will download them at start: %s (stage them once: %s)", names, fix
    )


def _cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def check_output(out: OutputLayout) -> None:
    """A small file written and removed where the output goes."""
    probe = f"{out.root}/.arhn-preflight-{uuid.uuid4().hex[:8]}"
    try:
        out.fs.makedirs(out.root, exist_ok=True)
        with out.fs.open(probe, "wb") as f:
            f.write(b"ok")
        out.fs.rm(probe)
    except Exception as e:
        raise PreflightError(f"output.path {out.path} is not writable: {type(e).__name__}: {e}") from None


def gpus_needed(engines: list[EngineConfig]) -> tuple[int, str]:
    """GPUs the replicas of the pools' engines ask for, and the arithmetic behind it."""
    total, parts = 0, []
    for engine in engines:
        if not use_gpus(engine):
            continue
        total += engine.replicas * gpus_per_replica(engine)
        parts.append(f"{engine.replicas} replicas x TP {engine.tensor_parallel_size} x PP {engine.pipeline_parallel_size}")
    return total, " + ".join(parts)


def wait_for_gpus(engines: list[EngineConfig], preflight: PreflightConfig, say=None) -> None:
    """Return once the cluster has the GPUs the pools' ``engines`` ask for; say so at once and every
    ``preflight.poll_s`` while waiting; stop after ``preflight.gpu_wait_s`` (None: never)."""
    import ray

    say = say or (lambda text: log.warning("%s", text))
    needed, how = gpus_needed(engines)
    if not needed:
        return
    limit = preflight.gpu_wait_s
    started = time.monotonic()
    while True:
        have = int(ray.cluster_resources().get("GPU", 0))
        if have >= needed:
            return
        waited = time.monotonic() - started
        message = f"the job needs {needed} GPUs ({how}); the cluster has {have}"
        if limit is not None and waited >= limit:
            raise PreflightError(f"{message}. Add GPU nodes, or lower engine.replicas (preflight.gpu_wait_s={limit:g})")
        after = "" if limit is None else f", for at most {limit - waited:.0f} s more"
        say(f"{message}: waiting for GPU nodes{after} (preflight.gpu_wait_s=0 fails instead)")
        time.sleep(preflight.poll_s if limit is None else max(0.0, min(preflight.poll_s, limit - waited)))
