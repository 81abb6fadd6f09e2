"""Where replicas run: the Ray cluster, GPUs per replica, placement groups for tensor parallel.

Each replica owns one engine of ``tensor_parallel_size x pipeline_parallel_size`` GPUs, packed
on one node (as ``ray.data.llm`` does); on CPU it asks for ``engine.num_cpus`` instead.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from arhn_ray.config import Config, EngineConfig

log = logging.getLogger(__name__)
_placement_groups: list = []  # created by this driver for replicas; removed when the run ends


def init_ray(address: str | None) -> None:
    """Join the cluster named by ``address`` / ``RAY_ADDRESS``, else start a local one of our own.

    Never ``ray.init()``'s guess: it joins whatever Ray runs on the machine, so a second run (or a
    notebook's Ray) would share, and on exit tear down, another process's cluster.
    ``pipeline.ray_address=auto`` joins a running one on purpose."""
    import os

    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True)


def use_gpus(engine: EngineConfig) -> bool:
    import ray

    if engine.device != "auto":
        return engine.device == "gpu"
    return engine.kind == "vllm" and ray.cluster_resources().get("GPU", 0) > 0


def gpus_per_replica(engine: EngineConfig) -> int:
    return engine.tensor_parallel_size * engine.pipeline_parallel_size


def _placement_group_strategy(bundles: int) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.placement_group([{"GPU": 1, "CPU": 1}] * bundles, strategy="STRICT_PACK")
    _placement_groups.append(pg)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}


def remove_placement_groups() -> None:
    import ray

    while _placement_groups:
        ray.util.remove_placement_group(_placement_groups.pop())


def end_replicas(step_class: str = "RefineStage") -> int:
    """Ends this job's replicas not yet dead after its Dataset failed: they go on with batches whose
    results no one reads, and hold the CPUs or GPUs the retry's replicas wait for. One still
    starting (on a loaded node) would take them once up, so it is ended too. Needs Ray's state API
    (the dashboard: KubeRay and ``ray job submit`` have it); returns how many were ended."""
    import ray
    from ray._raylet import ActorID
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    try:
        left = list_actors(filters=[("state", "!=", "DEAD"), ("job_id", "=", job)], limit=10_000, timeout=10)
    except Exception as e:  # no dashboard: the replicas end when Ray Data lets them go
        log.info("replicas of the failed attempt not ended: %s", e)
        return 0
    ended = 0
    for actor in left:
        if step_class in (actor.class_name or ""):
            try:  # Ray Data holds no name for its actors: ended by id, as `ray kill` would
                ray._private.worker.global_worker.core_worker.kill_actor(ActorID.from_hex(actor.actor_id), True)
                ended += 1
            except Exception as e:
                log.info("replica %s not ended: %s", actor.actor_id, e)
    return ended


def replica_resources(engine: EngineConfig, restarts: int = 3) -> dict[str, Any]:
    """``map_batches`` arguments that pin each replica: GPUs (placement group past one), else CPUs.
    A replica whose process dies (its engine died, or it crashed) is restarted and its batch retried."""
    args: dict[str, Any] = {"max_restarts": restarts, "max_task_retries": restarts}
    if not use_gpus(engine):
        return {**args, "num_cpus": engine.num_cpus}
    gpus = gpus_per_replica(engine)
    if gpus == 1:
        return {**args, "num_gpus": 1}
    return {**args, "num_gpus": 0, "num_cpus": 0, "ray_remote_args_fn": partial(_placement_group_strategy, gpus)}


def teacher_layout(cfg: Config, cluster: dict[str, float], restarts: int = 3) -> tuple[int, dict[str, Any]]:
    """TopK-PercPos's teachers: where the LLM would run on GPUs (``engine.device``), one a GPU (no
    placement group: a teacher fits in one), as many as ``baseline.replicas`` or the cluster's
    GPUs; elsewhere ``engine.replicas`` of ``engine.num_cpus``. Returns the pool's size and its
    ``map_batches`` arguments."""
    args: dict[str, Any] = {"max_restarts": restarts, "max_task_retries": restarts}
    gpus = int(cluster.get("GPU", 0)) if use_gpus(cfg.engine) else 0
    if gpus:
        return cfg.baseline.replicas or gpus, {**args, "num_gpus": 1}
    return cfg.baseline.replicas or cfg.engine.replicas, {**args, "num_cpus": cfg.engine.num_cpus}


def pool_layout(replica: str, cfg: Config, engine: EngineConfig, cluster: dict[str, float]) -> tuple[int, dict[str, Any]]:
    """The pool's size and ``map_batches`` arguments for replicas that hold ``replica`` (a method's
    ``Method.replica``): LLM engines as ``engine.*`` says, or teachers (``teacher_layout``)."""
    restarts = cfg.pipeline.max_replica_restarts
    if replica == "teacher":
        return teacher_layout(cfg, cluster, restarts)
    return engine.replicas, replica_resources(engine, restarts)
