"""The whole job, top to bottom: list shards -> read + validate -> refine -> write -> report.

``fused``: one actor pool, each replica takes a row through Stage 1, Stage 2 and labeling.
``staged``: a Stage 1 pool, then a Stage 2 pool (which may run another model).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf

from arhn_ray.config import Config, EngineConfig, config_digest, mask_secrets_in_logs, to_yaml
from arhn_ray.data.readers import count_rows, filesystem, list_shards, shard_name
from arhn_ray.method.prompts import PromptSet
from arhn_ray.pipeline.sink import ShardSink, complete_shards, shard_manifests
from arhn_ray.pipeline.stages import AsyncRefineStage, RefineStage, read_shard
from arhn_ray.stats import RunStats, write_report

log = logging.getLogger(__name__)


def init_ray(cfg: Config) -> None:
    """Join the cluster named by ``pipeline.ray_address`` / ``RAY_ADDRESS``, or start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.pipeline.ray_address, log_to_driver=True)


def _use_gpus(engine: EngineConfig) -> bool:
    import ray

    if engine.device != "auto":
        return engine.device == "gpu"
    return engine.kind == "vllm" and ray.cluster_resources().get("GPU", 0) > 0


_placement_groups: list = []  # created by this driver for replicas; removed when the run ends


def _placement_group_strategy(bundles: int) -> dict[str, Any]:
    """One engine of tensor x pipeline parallel GPUs, packed on one node (as ray.data.llm does)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.placement_group([{"GPU": 1, "CPU": 1}] * bundles, strategy="STRICT_PACK")
    _placement_groups.append(pg)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}


def _remove_placement_groups() -> None:
    import ray

    while _placement_groups:
        ray.util.remove_placement_group(_placement_groups.pop())


def replica_resources(engine: EngineConfig) -> dict[str, Any]:
    """``map_batches`` arguments that pin each replica: GPUs (placement group past one), else CPUs."""
    from functools import partial

    args: dict[str, Any] = {"max_restarts": 3, "max_task_retries": 3}
    if not _use_gpus(engine):
        return {**args, "num_cpus": engine.num_cpus}
    gpus = engine.tensor_parallel_size * engine.pipeline_parallel_size
    if gpus == 1:
        return {**args, "num_gpus": 1}
    return {**args, "num_gpus": 0, "num_cpus": 0, "ray_remote_args_fn": partial(_placement_group_strategy, gpus)}


def _pool(ds, cfg: Config, step: str, engine: EngineConfig):
    import ray

    cfg = replace(cfg, engine=engine)
    # an async replica takes several batches at once and its engine overlaps them (as ray.data.llm does)
    stage, calls = (AsyncRefineStage, cfg.pipeline.max_concurrent_batches) if engine.async_engine else (RefineStage, 1)
    return ds.map_batches(
        stage,
        fn_constructor_kwargs={"cfg": cfg, "step": step},
        batch_size=cfg.pipeline.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=engine.replicas, max_concurrent_calls_per_actor=calls),
        **replica_resources(engine),
    )


def stage2_engine(cfg: Config) -> EngineConfig:
    if not cfg.stage2.engine:
        return cfg.engine
    merged = OmegaConf.merge(OmegaConf.structured(cfg.engine), cfg.stage2.engine)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def plan_shards(cfg: Config) -> tuple[dict[str, str], dict[str, int], list[str], dict[str, str]]:
    """Input shards to run (name -> uri), their row counts, shards already complete, unreadable ones."""
    shards = list_shards(cfg.input.path, cfg.input.storage_options)
    by_name: dict[str, str] = {}
    for uri in shards:
        name = shard_name(uri)
        if name in by_name:
            raise ValueError(f"input shards {by_name[name]} and {uri} would both write output {name!r}: rename one")
        by_name[name] = uri
    done = set() if cfg.output.overwrite else complete_shards(cfg.output.path, cfg.output.storage_options)
    todo, counts, unreadable = {}, {}, {}
    for name, uri in by_name.items():
        if name in done:
            continue
        try:
            n = count_rows(uri, cfg.input.storage_options)
        except Exception as e:
            unreadable[name] = f"{uri}: {type(e).__name__}: {e}"
            log.error("input shard %s cannot be read and is skipped: %s", uri, unreadable[name])
            continue
        todo[name] = uri
        counts[name] = n if cfg.input.limit is None else min(n, cfg.input.limit)
    return todo, counts, sorted(done & set(by_name)), unreadable


def run(cfg: Config) -> dict[str, Any]:
    """Refine ``cfg.input.path`` into ``cfg.output.path``; returns the run's statistics."""
    import ray

    started = time.time()
    mask_secrets_in_logs(cfg)
    todo, counts, skipped, unreadable = plan_shards(cfg)
    fs, root = filesystem(cfg.output.path, cfg.output.storage_options)
    fs.makedirs(root, exist_ok=True)
    if cfg.output.overwrite:
        for sub in ("_shards", "refined", "rejected"):
            if fs.exists(f"{root}/{sub}"):
                fs.rm(f"{root}/{sub}", recursive=True)
    with fs.open(f"{root}/config.yaml", "wt") as f:
        f.write(to_yaml(cfg))
    log.info("%d shards to refine (%d rows), %d already complete, %d unreadable", len(todo), sum(counts.values()), len(skipped), len(unreadable))

    sink = ShardSink(cfg.output.path, counts, cfg.output.storage_options)
    total = sum(counts.values())
    if total:
        init_ray(cfg)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = cfg.pipeline.progress
        ds = ray.data.from_items([{"shard": todo[n]} for n, c in counts.items() if c], override_num_blocks=max(1, len(todo)))
        ds = ds.flat_map(
            read_shard,
            # reading is light I/O: it must not wait for a CPU slot that the engines hold
            num_cpus=0,
            fn_kwargs={
                "fmt": cfg.input.format,
                "max_passage_chars": cfg.input.max_passage_chars,
                "storage_options": dict(cfg.input.storage_options),
                "limit": cfg.input.limit,
            },
        )
        if cfg.pipeline.mode == "fused":
            ds = _pool(ds, cfg, "fused", cfg.engine)
        else:
            ds = _pool(ds, cfg, "stage1", cfg.engine)
            ds = _pool(ds, cfg, "stage2", stage2_engine(cfg))
        last = 0.0
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                sink.add(batch.to_pylist())
                if time.time() - last > 10:
                    last = time.time()
                    log.info("progress: %d / %d rows written", sink.rows_done, total)
        finally:
            _remove_placement_groups()
    sink.close()
    for name, reason in sink.failed.items():
        unreadable[name] = reason
    return finalize(cfg, started, unreadable)


def finalize(cfg: Config, started: float, unreadable: dict[str, str] | None = None) -> dict[str, Any]:
    """stats.json, report.md and report.png over every complete shard (this run's and earlier ones)."""
    fs, root = filesystem(cfg.output.path, cfg.output.storage_options)
    stats = RunStats()
    for manifest in shard_manifests(cfg.output.path, cfg.output.storage_options):
        stats.merge(RunStats.from_dict(manifest["stats"]))
    prompts = PromptSet.load(cfg.prompts.version, cfg.prompts.dir)
    wall = time.time() - started
    stats.meta = {
        "model": cfg.engine.model,
        "engine": cfg.engine.kind,
        "variant": cfg.method.variant,
        "prompt_version": prompts.version,
        "prompt_sha256": prompts.sha256,
        "config_hash": config_digest(cfg),
        "pipeline_mode": cfg.pipeline.mode,
        "unreadable_shards": unreadable or {},
    }
    data = stats.to_dict()
    data["throughput"] = {"wall_s": round(wall, 2), "queries_per_s": data["overall"]["queries"] / wall if wall else 0.0}
    with fs.open(f"{root}/stats.json", "wt") as f:
        json.dump(data, f, indent=2)
    if "file" in fs.protocol:  # a str or a tuple of names, ("file", "local") for the local disk
        write_report(data, root)
    else:
        _write_report_remote(fs, root, data)
    return data


def _write_report_remote(fs, root: str, data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        md, png = write_report(data, tmp)
        fs.put(str(md), f"{root}/report.md")
        fs.put(str(png), f"{root}/report.png")


def relabel(output: str, out: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Labels again from the LLM outputs stored in ``output`` (replay engine), into ``out``.

    The input is read again from the ``input.path`` saved in ``output/config.yaml``; Stage 1
    options (truncation, grounding, constraints) stay those of the original run, so the stored
    Stage 2 outputs answer the same prompts.
    """
    from arhn_ray.config import load_config

    fs, root = filesystem(output)
    with fs.open(f"{root}/config.yaml", "rt") as f:
        saved = OmegaConf.create(f.read())
    for secret_path in ("input.storage_options", "output.storage_options"):
        OmegaConf.update(saved, secret_path, {}, merge=False)
    with tempfile.TemporaryDirectory() as tmp:
        saved_path = f"{tmp}/config.yaml"
        OmegaConf.save(saved, saved_path)
        cfg = load_config(
            saved_path,
            [
                "engine.kind=replay",
                f"engine.replay_path={output}",
                f"output.path={out}",
                "output.overwrite=true",
                "stage2.engine=null",
                *(overrides or []),
            ],
        )
    return run(cfg)
