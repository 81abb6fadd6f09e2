"""The whole job, top to bottom: plan parts -> read + validate -> refine -> write -> report.

Input files are split into parts of about ``input.part_rows`` rows (arhn_ray/data/parts.py);
each part is read, refined and written on its own, and a rerun skips the parts already written.

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

from arhn_ray.card import render_card
from arhn_ray.config import Config, ConfigError, EngineConfig, config_digest, mask_secrets_in_logs, stage2_engine, to_yaml
from arhn_ray.data.parts import Part, plan_parts
from arhn_ray.data.readers import filesystem, list_shards, shard_name
from arhn_ray.method.prompts import PromptSet
from arhn_ray.pipeline.metrics import RunMetrics
from arhn_ray.pipeline.placement import init_ray, remove_placement_groups, replica_resources
from arhn_ray.pipeline.preflight import check_models, check_output, wait_for_gpus
from arhn_ray.pipeline.progress import Progress
from arhn_ray.pipeline.sink import PartSink, complete_parts, part_manifests
from arhn_ray.pipeline.stages import AsyncRefineStage, RefineStage, read_parts
from arhn_ray.stats import RunStats, write_report

log = logging.getLogger(__name__)


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
        **replica_resources(engine, cfg.pipeline.max_replica_restarts),
    )


class TooManyRejected(RuntimeError):
    """More of the rows seen were rejected than ``pipeline.max_rejected_fraction`` allows."""


def plan(cfg: Config, done: dict[str, dict] | None = None) -> tuple[list[Part], list[dict], dict[str, str]]:
    """Parts to run, manifests of parts already written, unreadable files (name -> reason).
    Reads parquet footers and the first MiB of JSONL files, nothing more. ``done``: the parts
    already written, when the caller has read them (else they are read from the output)."""
    shards = list_shards(cfg.input.path, cfg.input.storage_options)
    by_name: dict[str, str] = {}
    for uri in shards:
        name = shard_name(uri)
        if name in by_name:
            raise ValueError(f"input shards {by_name[name]} and {uri} would both write output {name!r}: rename one")
        by_name[name] = uri
    if done is None:
        done = {} if cfg.output.overwrite else complete_parts(cfg.output.path, cfg.output.storage_options)
    for manifest in done.values():
        if manifest["part_rows"] != cfg.input.part_rows:
            raise ConfigError(
                f"config key 'input.part_rows': {cfg.output.path} holds parts written with input.part_rows={manifest['part_rows']}: "
                f"rerun with that value, or set output.overwrite=true to start again"
            )
    todo, unreadable = [], {}
    for name, uri in by_name.items():
        try:
            parts = plan_parts(uri, cfg.input.part_rows, cfg.input.storage_options, cfg.input.limit)
        except Exception as e:
            unreadable[name] = f"{uri}: {type(e).__name__}: {e}"
            log.error("input shard %s cannot be read and is skipped: %s", uri, unreadable[name])
            continue
        todo += [p for p in parts if p.key not in done]
    return todo, list(done.values()), unreadable


def run(cfg: Config) -> dict[str, Any]:
    """Refine ``cfg.input.path`` into ``cfg.output.path``; returns the run's statistics."""
    import ray

    started = time.time()
    mask_secrets_in_logs(cfg)
    check_models(cfg)
    fs, root = filesystem(cfg.output.path, cfg.output.storage_options)
    if cfg.output.overwrite:
        for sub in ("_parts", "refined", "rejected"):
            if fs.exists(f"{root}/{sub}"):
                fs.rm(f"{root}/{sub}", recursive=True)
    todo, done, unreadable = plan(cfg)
    check_output(cfg)
    with fs.open(f"{root}/config.yaml", "wt") as f:
        f.write(to_yaml(cfg))
    progress = Progress(todo, done)
    progress.announce(unreadable)

    sink = PartSink(cfg.output.path, todo, cfg.output.storage_options)
    if todo:
        init_ray(cfg.pipeline.ray_address)
        wait_for_gpus(cfg)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = cfg.pipeline.progress and cfg.pipeline.ray_progress_bars
        # small blocks: a batch's results reach the writer when the batch is done, not with its whole part
        ctx.target_max_block_size = cfg.pipeline.block_bytes
        ds = ray.data.from_items([{"part": p.to_json()} for p in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            read_parts,
            batch_size=1,
            # reading is light I/O: it must not wait for a CPU slot that the engines hold; a cap on
            # parts read at once keeps memory to a few parts whatever the size of the files
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=cfg.pipeline.read_concurrency),
            fn_kwargs={
                "fmt": cfg.input.format,
                "max_passage_chars": cfg.input.max_passage_chars,
                "storage_options": dict(cfg.input.storage_options),
                # a block per batch: a replica's task is one batch, so its results reach the writer
                # when the batch is done and a crash costs only the batches in flight
                "block_rows": cfg.pipeline.batch_size,
            },
        )
        if cfg.pipeline.mode == "fused":
            ds = _pool(ds, cfg, "fused", cfg.engine)
        else:
            ds = _pool(ds, cfg, "stage1", cfg.engine)
            ds = _pool(ds, cfg, "stage2", stage2_engine(cfg))
        metrics = RunMetrics(cfg.output.path)
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                sink.add(batch.to_pylist())
                progress.update(sink)
                metrics.update(sink)
                _check_rejections(cfg, sink)
        finally:
            remove_placement_groups()
    sink.close()
    progress.update(sink, force=True)
    for name, reason in sink.failed.items():
        unreadable[name] = reason
    return finalize(cfg, started, unreadable)


def _check_rejections(cfg: Config, sink: PartSink) -> None:
    seen = sink.rows_done
    if seen < max(1, cfg.pipeline.max_rejected_min_rows):
        return
    if sink.rejected / seen > cfg.pipeline.max_rejected_fraction:
        reason, count = sink.reasons.most_common(1)[0]
        raise TooManyRejected(
            f"{sink.rejected} of {seen} rows rejected ({sink.rejected / seen:.0%}), over "
            f"pipeline.max_rejected_fraction={cfg.pipeline.max_rejected_fraction:g}; most common reason: "
            f"{reason} ({count} rows). Parts already written are kept: fix the cause and run again."
        )


def finalize(cfg: Config, started: float, unreadable: dict[str, str] | None = None) -> dict[str, Any]:
    """stats.json, report.md and report.png over every complete shard (this run's and earlier ones)."""
    fs, root = filesystem(cfg.output.path, cfg.output.storage_options)
    stats = RunStats()
    for manifest in part_manifests(cfg.output.path, cfg.output.storage_options):
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
    with fs.open(f"{root}/README.md", "wt") as f:
        f.write(render_card(data))
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
