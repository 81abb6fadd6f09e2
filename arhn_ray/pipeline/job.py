"""The whole job, top to bottom: plan parts -> read + validate -> refine -> write -> report.

Input files are split into parts of about ``input.part_rows`` rows (arhn_ray/data/parts.py);
each part is read, refined and written on its own, and a rerun skips the parts already written.

``fused``: one actor pool, each replica takes a row through Stage 1, Stage 2 and labeling.
``staged``: a Stage 1 pool, then a Stage 2 pool (which may run another model).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from arhn_ray.config import Config, ConfigError, EngineConfig, mask_secrets_in_logs, pools, to_yaml
from arhn_ray.data import layout
from arhn_ray.data.hub import pin_input as pin_input_at
from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.parts import Part, parts_to_run
from arhn_ray.outputs.report import write_report
from arhn_ray.outputs.saved import saved_yaml
from arhn_ray.outputs.sink import PartSink
from arhn_ray.pipeline.counters import RunMetrics
from arhn_ray.pipeline.faults import ClusterFault, StoreFailed, fault_name, is_cluster_fault
from arhn_ray.pipeline.placement import end_replicas, init_ray, pool_layout, remove_placement_groups
from arhn_ray.pipeline.preflight import check_models, check_output, wait_for_gpus
from arhn_ray.pipeline.progress import Progress
from arhn_ray.pipeline.stages import AsyncRefineStage, RefineStage, read_parts
from arhn_ray.refiners import Method, method_for

log = logging.getLogger(__name__)
Shape = tuple[Method, list[tuple[str, EngineConfig]]]  # the method and its pools (config.pools): asked of the config once


def _pool(ds, cfg: Config, method: Method, step: str, engine: EngineConfig, elastic: bool = False):
    """The replicas' actor pool and its size; ``elastic`` (a retry after a lost node) starts with the
    replicas the nodes left can hold and grows back to the configured size as nodes join."""
    import ray

    cfg = replace(cfg, engine=engine)
    # an async replica takes several batches at once and its engine overlaps them (as ray.data.llm does)
    concurrent = engine.async_engine and method.has_async  # a teacher is called batch by batch
    stage, calls = (AsyncRefineStage, cfg.pipeline.max_concurrent_batches) if concurrent else (RefineStage, 1)
    size, resources = pool_layout(method.replica, cfg, engine, ray.cluster_resources())
    return size, ds.map_batches(
        stage,
        fn_constructor_kwargs={"cfg": cfg, "step": step},
        batch_size=cfg.pipeline.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1 if elastic else size, max_size=size, max_concurrent_calls_per_actor=calls),
        **resources,
    )


def _dataset(cfg: Config, shape: Shape, todo: list[Part], elastic: bool = False):
    """Parts -> read + validate -> the replicas' pool(s), as one streamed Ray Dataset; and how many
    replicas its pools hold."""
    import ray

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
    replicas = 0
    method, engines = shape
    for step, engine in engines:
        size, ds = _pool(ds, cfg, method, step, engine, elastic)
        replicas += size
    return ds, replicas


class TooManyRejected(RuntimeError):
    """More of the rows seen were rejected than ``pipeline.max_rejected_fraction`` allows."""


class EmptyInput(ValueError):
    """The input holds no row to refine: no Ray, no engine is started for it."""


def parts(cfg: Config, out: OutputLayout) -> tuple[list[Part], list[dict], dict[str, str]]:
    """Parts to run, manifests of parts already written, unreadable files (name -> reason)."""
    done = {} if cfg.output.overwrite else out.complete_parts()
    for manifest in done.values():
        if manifest["part_rows"] != cfg.input.part_rows:
            raise ConfigError(
                f"config key 'input.part_rows': {cfg.output.path} holds parts written with input.part_rows={manifest['part_rows']}: "
                f"rerun with that value, or set output.overwrite=true to start again"
            )
    todo, unreadable = parts_to_run(cfg.input.path, cfg.input.part_rows, cfg.input.storage_options, cfg.input.limit, done)
    for name, reason in unreadable.items():
        log.error("input shard %s cannot be read and is skipped: %s", name, reason)
    return todo, list(done.values()), unreadable


def pin_input(cfg: Config, out: OutputLayout) -> None:
    """An ``hf://`` input is read at one commit (data/hub.py's pin_input), the one this output's
    earlier run read if it has one."""
    earlier = None if cfg.output.overwrite else saved_yaml(out)
    pin_input_at(cfg.input, earlier.input if earlier is not None else None)


def run(cfg: Config, config_path: str | None = None, out: OutputLayout | None = None) -> dict[str, Any]:
    """Refine ``cfg.input.path`` into ``cfg.output.path``; returns the run's statistics.
    ``config_path`` (the file the user gave) goes into the fix a missing model's message names."""
    import ray

    started = time.time()
    method = method_for(cfg)  # a method.name / pipeline.mode pair its declaration does not allow stops here
    mask_secrets_in_logs(cfg)
    engines = pools(cfg)
    check_models(cfg, config_path)
    if out is None:  # the CLI hands down the layout it has checked (its log goes there)
        out = OutputLayout(cfg.output.path, cfg.output.storage_options)
        check_output(out)
    if cfg.output.overwrite:
        out.clear_parts()
    pin_input(cfg, out)
    todo, done, unreadable = parts(cfg, out)
    empty = [p for p in todo if p.file_size == 0 or p.rows == 0]
    todo = [p for p in todo if p not in empty]  # nothing to read, refine or account for
    if empty:
        log.warning("%d empty input file(s) skipped: %s", len(empty), ", ".join(sorted({p.uri for p in empty})[:3]))
    if not todo and not done and not unreadable:
        raise EmptyInput(f"input.path {cfg.input.path}: no rows to refine ({len(empty)} empty file(s)); no engine was started")
    out.write_text(layout.CONFIG, to_yaml(cfg))  # after pin_input: an hf:// input saved at its commit
    progress = Progress(todo, done, batch_size=cfg.pipeline.batch_size)
    progress.announce(unreadable)

    sink = PartSink(out, todo)
    if todo:
        init_ray(cfg.pipeline.ray_address)
        wait_for_gpus([engine for _, engine in engines], cfg.preflight)
        ctx = ray.data.DataContext.get_current()
        # restored after the run: an in-process caller (evaluate's baseline, a notebook) keeps Ray's
        # defaults, else its own datasets write a file per ~1 MiB block (evaluate's embeddings: ~100K files)
        saved = ctx.enable_progress_bars, ctx.target_max_block_size
        ctx.enable_progress_bars = cfg.pipeline.progress and cfg.pipeline.ray_progress_bars
        # small blocks: a batch's results reach the writer when the batch is done, not with its whole part
        ctx.target_max_block_size = cfg.pipeline.block_bytes
        try:
            _stream(cfg, (method, engines), todo, sink, progress, RunMetrics(out.path))
        finally:
            ctx.enable_progress_bars, ctx.target_max_block_size = saved
    sink.close()
    progress.update(sink, force=True)
    for name, reason in sink.failed.items():
        unreadable[name] = reason
    return write_report(cfg, method, out, time.time() - started, unreadable, refined_now=bool(todo))


def _stream(cfg: Config, shape: Shape, todo: list[Part], sink: PartSink, progress: Progress, metrics: RunMetrics) -> None:
    """The parts through the pipeline into the sink; a lost node (Ray 2.60 fails the Dataset) runs
    the unwritten parts again on the nodes left, ``pipeline.max_attempts`` times in all."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.wait_for_min_actors_s
    try:
        _attempts(cfg, shape, todo, sink, progress, metrics, ctx)
    finally:
        ctx.wait_for_min_actors_s = saved


def _attempts(cfg: Config, shape: Shape, todo: list[Part], sink: PartSink, progress: Progress, metrics: RunMetrics, ctx) -> None:
    open_parts = todo
    for attempt in range(1, cfg.pipeline.max_attempts + 1):
        if attempt > 1:  # a static cluster that lost its last node must not wait forever for a replica
            ctx.wait_for_min_actors_s = cfg.pipeline.replica_wait_s
            progress.wait_for(f"attempt {attempt} of {cfg.pipeline.max_attempts}: starting replicas on the nodes left "
                              f"(stops after {cfg.pipeline.replica_wait_s:g} s without one)")  # fmt: skip
        try:
            # prefetch_batches=0: with a prefetch, Ray Data (2.60, prefetch_batches_locally) hands a block
            # over only once the next one exists, so a slow replica's rows reached the sink a batch late
            # and a two-batch run showed no row until its end
            with progress.heartbeat(sink):
                ds, progress.replicas = _dataset(cfg, shape, open_parts, elastic=attempt > 1)
                batches = ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)
                for batch in batches:
                    if progress.waiting:  # rows again: the line goes back to the time left
                        progress.wait_for(None)
                    try:
                        sink.add(batch.to_pylist())
                    except OSError as e:  # s3fs gives up after its retries: a store down, not a bad row
                        raise StoreFailed(f"writing to {cfg.output.path} failed after the storage client's retries "
                                          f"({type(e).__name__}: {e}); {len(sink.finished)} of {len(todo)} parts are written "
                                          "and kept: run the same command again when the store answers") from e  # fmt: skip
                    progress.update(sink)
                    metrics.update(sink)
                    _check_rejections(cfg, sink)
            return
        except Exception as e:
            no_replica = attempt > 1 and type(e).__name__ == "GetTimeoutError"
            if not (is_cluster_fault(e) or no_replica):
                raise
            open_parts = sink.reopen()
            where = f"{len(sink.finished)} of {len(todo)} parts written"
            if no_replica:
                raise ClusterFault(f"no node left can hold a replica (waited {cfg.pipeline.replica_wait_s} s, "
                                   f"pipeline.replica_wait_s); {where}: rerun the same command when the cluster has nodes") from e  # fmt: skip
            if attempt == cfg.pipeline.max_attempts:
                raise ClusterFault(f"{fault_name(e)}, {attempt} times (pipeline.max_attempts={attempt}); {where}: "
                                   "rerun the same command to refine the rest") from e  # fmt: skip
            log.warning("%s: %s; the %d other parts run on the nodes left (attempt %d of %d)", fault_name(e), where,
                        len(open_parts), attempt + 1, cfg.pipeline.max_attempts)  # fmt: skip
            # the failed attempt's replicas go on with batches no one reads and hold the CPUs or GPUs the
            # retry's replicas need: left to Ray Data, the retry waited for them (a 22-36 s stall, faults.py)
            if cfg.pipeline.end_failed_replicas and (ended := end_replicas()):
                log.info("ended the %d replicas of attempt %d left on the nodes", ended, attempt, extra={"notice": True})
        finally:
            remove_placement_groups()


def _check_rejections(cfg: Config, sink: PartSink) -> None:
    seen = sink.rows_done
    if seen < max(1, cfg.pipeline.max_rejected_min_rows):
        return
    rejected = sink.counts["rejected"]
    if rejected / seen > cfg.pipeline.max_rejected_fraction:
        reason, count = sink.total.rejected_reasons.most_common(1)[0]
        raise TooManyRejected(
            f"{rejected} of {seen} rows rejected ({rejected / seen:.0%}), over "
            f"pipeline.max_rejected_fraction={cfg.pipeline.max_rejected_fraction:g}; most common reason: "
            f"{reason} ({count} rows). Parts already written are kept: fix the cause and run again."
        )
