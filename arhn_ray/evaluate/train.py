"""Training one arm: the retriever (sentence-transformers) fine-tuned with a contrastive loss over
one positive, k hard negatives and the in-batch negatives (MultipleNegativesRankingLoss, or its
cached variant for large batches), as the paper and RLHN train E5. Batches never hold the same
text twice (sentence-transformers' no-duplicates sampler), so a passage is never a positive and a
negative of one batch.

On one machine without a cluster address, an arm of one worker trains in evaluate's own process
(``evaluate.trainer=auto``): a loaded laptop tripped Ray Train's health checks (its placement-group
cleaner removed a live run's group), and one worker gains nothing from Ray Train. Elsewhere
each arm is a Ray Train job (``TorchTrainer``, data-parallel over ``evaluate.workers`` workers,
on GPUs with ``evaluate.use_gpu``) whose run, checkpoint included, lives on the output's own
storage (the workers of a multi-node cluster can all reach it; a driver's temp dir they cannot).
``evaluate.batch_size`` is the global batch: the sampler forms batches of that size and
accelerate splits each across the workers (``split_batches``), whose in-batch negatives are
gathered across devices, so 8 GPUs see the negatives one GPU with the whole batch would.
The examples reach the workers as a Ray Dataset read from the output (evaluate/examples.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from arhn_ray.data import layout
from arhn_ray.evaluate.examples import ORDER

WORK_PREFIX = "arhn-train-"  # a training worker's local folder (the examples' copy), removed when its arm ends

if TYPE_CHECKING:
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.data.layout import OutputLayout


def worker_resources(use_gpu: bool, memory_gb: float | None) -> dict[str, float]:
    """What one training worker reserves: one GPU (or one CPU, whose torch then runs one thread),
    and ``memory_gb`` of Ray's memory resource when set (CPU training is memory-bound: activations)."""
    need = {"GPU": 1.0} if use_gpu else {"CPU": 1.0}
    return need | ({"memory": memory_gb * 2**30} if memory_gb else {})


def reservable(per_worker: dict[str, float], workers: int, cluster: dict[str, float]) -> dict[str, float]:
    """``per_worker`` without its memory when the cluster's memory cannot hold one arm's workers:
    Ray would otherwise wait forever for a reservation it can never grant."""
    if per_worker.get("memory", 0.0) * workers <= cluster.get("memory", 0.0):
        return per_worker
    return {k: v for k, v in per_worker.items() if k != "memory"}


def arms_at_once(arms: int, workers: int, per_worker: dict[str, float], cluster: dict[str, float], asked: int = 0) -> int:
    """How many arms train side by side: ``asked`` if set, else as many whole arms (``workers``
    workers of ``per_worker`` each) as the cluster's resources hold at once."""
    if asked:
        return max(1, min(arms, asked))
    fits = min(int(cluster.get(k, 0.0) // (workers * v)) for k, v in per_worker.items())
    return max(1, min(arms, fits))


def arm_layout(ev: EvaluateConfig, cluster: dict[str, float], arms: int = 3) -> tuple[dict[str, float], int]:
    """What each training worker reserves on ``cluster`` and how many arms train at once there: a
    memory reservation the cluster cannot hold is dropped, and the arms then go one at a time."""
    asked = worker_resources(ev.use_gpu, ev.worker_memory_gb)
    per_worker = reservable(asked, ev.workers, cluster)
    return per_worker, arms_at_once(arms, ev.workers, per_worker, cluster, ev.arms_at_once if per_worker == asked else 1)


def global_batch(batch_size: int, queries: int, workers: int) -> int:
    """The batch an arm trains with: ``batch_size``, or the number of queries the arm's examples
    come from when smaller (a query's examples share its text and negatives, so a batch without
    duplicates holds one of them: a larger batch is never filled and the sampler yields none), a
    multiple of the workers (accelerate splits it evenly); 0 when that leaves no batch."""
    return min(batch_size, queries) // workers * workers


def in_process(trainer: str, workers: int, address: str | None) -> bool:
    """Whether arms train in evaluate's own process (``evaluate.trainer``; ``auto``: one worker an
    arm and no cluster address).

    Example:
        >>> in_process("auto", 1, None), in_process("auto", 1, "ray://head:10001"), in_process("auto", 2, None)
        (True, False, False)
    """
    return trainer == "in_process" or (trainer == "auto" and workers == 1 and not address)


def _local_copy(batches, folder: str):
    """The worker's copy of the examples, in example order: one Arrow file that ``datasets``
    memory-maps as it is (no second copy in a cache; the parquet-then-cache copy took twice the
    examples' size), in ``folder``, which ``train_loop`` removes when the arm ends."""
    import os

    import pyarrow as pa
    from datasets import Dataset

    path, writer = os.path.join(folder, "examples.arrow"), None
    with pa.OSFile(path, "wb") as sink:
        for batch in batches:
            writer = writer or pa.ipc.new_stream(sink, batch.schema)
            writer.write(batch)  # a Table (a Ray shard) or a RecordBatch (a parquet dataset)
        if writer is not None:
            writer.close()
    return Dataset.from_file(path).sort(ORDER, indices_cache_file_name=os.path.join(folder, "order.arrow")).remove_columns(ORDER)


def disk_bytes(folder: str) -> int:
    """What ``folder`` holds on the worker's local disk."""
    import os

    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def _model_and_loss(config: dict[str, Any], world: int):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(config["model"], device="cuda" if config["use_gpu"] else "cpu")
    model.max_seq_length = config["max_seq_len"]
    gather = world > 1
    if config["mini_batch_size"]:
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=config["mini_batch_size"], gather_across_devices=gather
        )
    else:
        loss = losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather)
    return model, loss


def train_loop(config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker: fine-tune, then report the model as the run's checkpoint (rank 0)."""
    import os
    import shutil
    import tempfile

    import ray.train

    context = ray.train.get_context()
    model, loss = _model_and_loss(config, context.get_world_size())
    work = tempfile.mkdtemp(prefix=WORK_PREFIX)
    try:
        shard = ray.train.get_dataset_shard("train").iter_batches(batch_format="pyarrow", batch_size=4096)
        metrics = _fit(config, model, loss, _local_copy(shard, work), work)
        if context.get_world_rank() == 0:
            saved = os.path.join(work, "model")
            model.save(saved)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(saved))
        else:
            ray.train.report(metrics)
    finally:  # a GPU node's disk is small: the examples' copy and the saved model go with the arm
        shutil.rmtree(work, ignore_errors=True)


def _fit(config: dict[str, Any], model, loss, train, work: str) -> dict[str, Any]:
    """The trainer on ``train`` (a worker's local copy of the examples); returns its metrics."""
    import resource

    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    bf16 = bool(config["use_gpu"] and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    batch = config["global_batch"]
    args = SentenceTransformerTrainingArguments(
        # the examples hold an instance a query an epoch (evaluate/examples.py): one shuffled pass is the epochs
        output_dir=work, num_train_epochs=1, per_device_train_batch_size=batch,
        accelerator_config={"split_batches": True}, bf16=bf16, tf32=bf16 or None,
        learning_rate=config["lr"], warmup_ratio=config["warmup_ratio"], seed=config["seed"], data_seed=config["seed"],
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=max(1, len(train) // batch // 10), use_cpu=not config["use_gpu"],
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    done = trainer.train()
    local_disk = disk_bytes(work)
    processes, split = trainer.accelerator.num_processes, trainer.accelerator.split_batches
    metrics = {"examples": len(train), "batch_size": args.per_device_train_batch_size * (1 if split else processes),
               "device_batch": args.per_device_train_batch_size // processes if split else args.per_device_train_batch_size,
               "world_size": processes, "gather_across_devices": loss.gather_across_devices, "bf16": args.bf16,
               "steps": done.global_step, "train_loss": round(float(done.training_loss), 4),
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               "worker_disk_mb": round(local_disk / 2**20, 2)}  # fmt: skip
    return metrics


KEPT = ("batch_size", "device_batch", "world_size", "gather_across_devices", "bf16", "steps", "train_loss", "peak_rss_gb",
        "worker_disk_mb")  # fmt: skip


def train_in_process(name: str, folder: str, batch: int, settings: dict[str, Any], out: OutputLayout):
    """``train_arm`` with one worker in this process: the examples read from ``folder`` (the output's
    filesystem), the model saved as the checkpoint under ``OUTPUT/evaluate/train`` as Ray Train's is."""
    import shutil
    import tempfile
    import time

    import pyarrow.dataset as pads
    from ray.train import Checkpoint

    started = time.perf_counter()
    fs = out.arrow_filesystem()
    model, loss = _model_and_loss(settings, 1)
    work = tempfile.mkdtemp(prefix=WORK_PREFIX)
    try:
        examples = pads.dataset(folder, filesystem=fs, format="parquet").to_batches(batch_size=4096)
        metrics = _fit({**settings, "global_batch": batch}, model, loss, _local_copy(examples, work), work)
        target = out.file(f"{layout.evaluate_file('train')}/arhn-evaluate-{name}/checkpoint_in_process")
        if out.local:
            model.save(target)
        else:
            model.save(f"{work}/model")
            out.fs.put(f"{work}/model", target, recursive=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Checkpoint(target, filesystem=fs), {**{k: metrics[k] for k in KEPT}, "seconds": round(time.perf_counter() - started, 1),
                                               "checkpoint": target if out.local else out.fs.unstrip_protocol(target)}  # fmt: skip


def train_arm(name: str, folder: str, batch: int, settings: dict[str, Any], per_worker: dict[str, float], out: OutputLayout):
    """Fine-tune ``settings['model']`` on the examples in ``folder`` (the output's filesystem) in a
    Ray Train job of ``settings['workers']`` workers reserving ``per_worker`` each, its run under
    ``OUTPUT/evaluate/train``; returns the checkpoint (on that storage) and the run's metrics."""
    import time

    import ray.data
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs = out.arrow_filesystem()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**settings, "global_batch": batch},
        scaling_config=ScalingConfig(
            num_workers=settings["workers"], use_gpu=settings["use_gpu"], resources_per_worker=per_worker
        ),
        # every worker reads all the examples: accelerate splits each batch (a shard each would split twice)
        datasets={"train": ray.data.read_parquet(folder, filesystem=fs)},
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(
            name=f"arhn-evaluate-{name}", storage_path=out.file(layout.evaluate_file("train")), storage_filesystem=fs
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    return result.checkpoint, {**{k: result.metrics[k] for k in KEPT}, "seconds": round(time.perf_counter() - started, 1),
                               "checkpoint": result.checkpoint.path if out.local else out.fs.unstrip_protocol(result.checkpoint.path)}  # fmt: skip
