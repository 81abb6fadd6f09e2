"""Training one arm: the retriever (sentence-transformers) fine-tuned with a contrastive loss over
one positive, k hard negatives and the in-batch negatives (MultipleNegativesRankingLoss, or its
cached variant for large batches), as the paper and RLHN train E5. A row with several positives
(relabeled ones) gives one example with one of them, drawn per seed, as Tevatron does; batches
never hold the same text twice (sentence-transformers' no-duplicates sampler), so a passage is
never a positive and a negative of one batch.

Each arm is a Ray Train job (``TorchTrainer``, data-parallel over ``evaluate.workers`` workers,
on GPUs with ``evaluate.use_gpu``); the model comes back as the run's checkpoint.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any

from arhn_ray.data.export import sample_negatives
from arhn_ray.method.passages import passage_text

if TYPE_CHECKING:
    from arhn_ray.config import EvaluateConfig


def examples(rows: list[dict], negatives: int, seed: int, query_prefix: str = "", passage_prefix: str = "") -> list[dict]:
    """One training example per row with a positive and at least one negative: anchor, positive, negative_1..k."""
    out = []
    for row in rows:
        negs = sample_negatives(row, negatives, seed, "repeat")
        if not negs or not row["positive_passages"]:
            continue
        rng = random.Random(int(hashlib.sha1(f"pos:{seed}:{row['query_id']}".encode()).hexdigest()[:12], 16))
        positive = rng.choice(row["positive_passages"])
        example = {"anchor": query_prefix + row["query"], "positive": passage_prefix + passage_text(positive)}
        example.update({f"negative_{i}": passage_prefix + passage_text(n) for i, n in enumerate(negs, 1)})
        out.append(example)
    return out


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


def train_loop(config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker: fine-tune, then report the model as the run's checkpoint (rank 0)."""
    import os
    import tempfile

    import ray.train
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    model = SentenceTransformer(config["model"], device="cuda" if config["use_gpu"] else "cpu")
    model.max_seq_length = config["max_seq_len"]
    if config["mini_batch_size"]:
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=config["mini_batch_size"])
    else:
        loss = losses.MultipleNegativesRankingLoss(model)
    work = tempfile.mkdtemp(prefix="arhn-train-")
    # an arm smaller than a batch trains on what it has (one smaller batch), as a sampler of length 0 cannot
    batch = max(1, min(config["batch_size"], len(config["examples"])))
    args = SentenceTransformerTrainingArguments(
        output_dir=work, num_train_epochs=config["epochs"], per_device_train_batch_size=batch,
        learning_rate=config["lr"], warmup_ratio=config["warmup_ratio"], seed=config["seed"], data_seed=config["seed"],
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=max(1, len(config["examples"]) // batch // 10), use_cpu=not config["use_gpu"],
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(config["examples"]), loss=loss)
    done = trainer.train()
    import resource

    metrics = {"examples": len(config["examples"]), "batch_size": args.per_device_train_batch_size, "steps": done.global_step,
               "train_loss": round(float(done.training_loss), 4),
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}  # fmt: skip
    if ray.train.get_context().get_world_rank() == 0:
        saved = os.path.join(work, "model")
        model.save(saved)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(saved))
    else:
        ray.train.report(metrics)


def train_arm(name: str, rows_examples: list[dict], settings: dict[str, Any], per_worker: dict[str, float], storage: str,
              target: str) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``settings['model']`` on the examples in a Ray Train job of ``settings['workers']``
    workers reserving ``per_worker`` each; the model is copied to ``target``; returns the run's
    metrics (steps, training loss, the rank-0 worker's peak memory, seconds)."""
    import shutil
    import time

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**settings, "examples": rows_examples},
        scaling_config=ScalingConfig(num_workers=settings["workers"], use_gpu=settings["use_gpu"], resources_per_worker=per_worker),
        run_config=RunConfig(name=f"arhn-evaluate-{name}", storage_path=storage),
    )
    started = time.perf_counter()
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(folder, target, dirs_exist_ok=True)
    kept = ("batch_size", "steps", "train_loss", "peak_rss_gb")
    return {**{k: result.metrics[k] for k in kept}, "seconds": round(time.perf_counter() - started, 1)}
