"""The loop from cleaned data to a trained retriever: one retriever per arm with identical
hyperparameters and seeds (``original`` rows as they came in, ``refined`` rows, the
``topk_percpos`` baseline's rows; ``zero_shot`` untrained), each scored on a BEIR-format set;
the paired per-query differences of nDCG@10 with bootstrap 95% intervals. Writes
``OUTPUT/evaluate/evaluate.json``, ``evaluate.md``, ``evaluate.png`` and a section of the card."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from arhn_ray.config import Config, EvaluateConfig, load_config
from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.parts import parts_to_run
from arhn_ray.data.rows import read_rows
from arhn_ray.engines.teacher import resolve_teacher
from arhn_ray.evaluate.beir import load_beir
from arhn_ray.evaluate.metrics import bootstrap_mean, mean, paired_bootstrap, per_query
from arhn_ray.evaluate.report import render_markdown, render_png, write_card_section
from arhn_ray.evaluate.retrieve import retrieve
from arhn_ray.evaluate.train import arm_layout, examples, train_arm
from arhn_ray.pipeline.placement import init_ray

log = logging.getLogger(__name__)
ARMS = ("zero_shot", "original", "refined", "topk_percpos")
SETTINGS = ("model", "query_prefix", "passage_prefix", "max_seq_len", "batch_size", "mini_batch_size", "lr", "warmup_ratio",
            "epochs", "negatives", "seed", "workers", "use_gpu")  # fmt: skip


def saved_config(out: OutputLayout, overrides: list[str]) -> Config:
    """The output's own config (its secrets were redacted: the output's storage options stand in)."""
    saved = OmegaConf.create(out.read_text("config.yaml"))
    for key in ("input.storage_options", "output.storage_options"):
        OmegaConf.update(saved, key, OmegaConf.create(out.storage_options), merge=False)
    with tempfile.TemporaryDirectory() as tmp:
        OmegaConf.save(saved, f"{tmp}/config.yaml")
        return load_config(f"{tmp}/config.yaml", overrides)


def original_rows(cfg: Config) -> list[dict]:
    """The input rows as they came in (the valid ones), read again from ``input.path``."""
    parts, _ = parts_to_run(cfg.input.path, cfg.input.part_rows, cfg.input.storage_options, cfg.input.limit, done={})
    return [r.row for p in parts for r in read_rows(p, cfg.input.format, cfg.input.max_passage_chars, cfg.input.storage_options) if r.row]


def baseline_rows(cfg: Config, out: OutputLayout, baseline: str | None) -> tuple[list[dict], str]:
    """A given TopK-PercPos output's rows, or the baseline run now on the same input."""
    if baseline:
        return list(OutputLayout(baseline, out.storage_options).read_rows("refined")), baseline
    from arhn_ray.pipeline.job import run

    target = out.file("evaluate/topk_percpos")
    if not OutputLayout(target, out.storage_options).exists("stats.json"):
        with tempfile.TemporaryDirectory() as tmp:
            OmegaConf.save(OmegaConf.structured(cfg), f"{tmp}/config.yaml")
            run(load_config(f"{tmp}/config.yaml", ["method.name=topk_percpos", "pipeline.mode=fused", f"output.path={target}"]))
    return list(OutputLayout(target, out.storage_options).read_rows("refined")), target


def train_arms(rows: dict[str, list[dict]], settings: dict[str, Any], ev: EvaluateConfig, work: Path) -> tuple[dict[str, tuple[str, dict]], int]:
    """Trains every arm but ``zero_shot``, side by side as far as the cluster holds them (each arm
    its own Ray Train run; identical settings and seeds, so the order does not matter). Returns each
    arm's model folder and training metrics, and how many arms trained at once."""
    import ray

    arms = [a for a in ARMS if a != "zero_shot"]
    cluster = ray.cluster_resources()
    per_worker, at_once = arm_layout(ev, cluster, len(arms))
    if ev.worker_memory_gb and "memory" not in per_worker:
        log.warning("evaluate: Ray has %.1f GiB of memory here, less than an arm's %d worker(s) x %g GiB (evaluate.worker_memory_gb): "
                    "the arms train one at a time, without reserving it; lower evaluate.batch_size or max_seq_len if one runs "
                    "out of memory", cluster.get("memory", 0.0) / 2**30, ev.workers, ev.worker_memory_gb)  # fmt: skip
    log.info("evaluate: training %d arms, %d at a time (%d worker(s) each, a worker reserves %s)", len(arms), at_once, ev.workers,
                ", ".join(f"{v / 2**30:g} GiB memory" if k == "memory" else f"{v:g} {k}" for k, v in per_worker.items()), extra={"notice": True})  # fmt: skip

    def one(arm: str) -> tuple[str | None, dict[str, Any]]:
        train = examples(rows[arm], ev.negatives, ev.seed, ev.query_prefix, ev.passage_prefix)
        if not train:
            log.warning("evaluate: the %s arm has no training example (no row kept a positive and a negative): not trained", arm)
            return None, {"examples": 0, "trained": False}
        log.info("evaluate: training the %s arm on %d examples", arm, len(train), extra={"notice": True})
        metrics = train_arm(arm, train, settings, per_worker, str(work / "ray"), str(work / arm))
        return str(work / arm), {"examples": len(train), "trained": True, **metrics}

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="arhn-arm") as pool:
        return dict(zip(arms, pool.map(one, arms))), at_once


def detectable_difference(ndcg: list[float]) -> float:
    """The nDCG@10 difference the set could resolve: 1.96 x sqrt(2) x the per-query spread of the
    untrained model / sqrt(queries), i.e. two arms whose per-query scores vary as much and are not
    correlated. From the spread, not from a paired interval: arms that rank alike give an interval
    of width 0, which says nothing about the set."""
    import statistics

    if len(ndcg) < 2:
        return 1.0
    return round(1.96 * 2**0.5 * statistics.stdev(ndcg) / len(ndcg) ** 0.5, 4)


def evaluate(output: str, eval_dir: str, overrides: list[str] | None = None, baseline: str | None = None,
             storage_options: dict | None = None) -> dict[str, Any]:  # fmt: skip
    out = OutputLayout(output, storage_options)
    cfg = saved_config(out, [f"evaluate.{o}" if not o.startswith("evaluate.") else o for o in overrides or []])
    ev = cfg.evaluate
    beir = load_beir(eval_dir, ev.split)
    settings = {k: getattr(ev, k) for k in SETTINGS} | {"model": resolve_teacher(ev.model)}
    named = {**settings, "model": ev.model}
    rows = {"original": original_rows(cfg), "refined": list(out.read_rows("refined"))}
    rows["topk_percpos"], baseline_from = baseline_rows(cfg, out, baseline)
    work = Path(tempfile.mkdtemp(prefix="arhn-evaluate-"))
    init_ray(cfg.pipeline.ray_address)
    results: dict[str, Any] = {"arms": {}, "paired": {}, "train": {"hyperparameters": named,
                                                                   "baseline_output": baseline_from, "arms": {}}}  # fmt: skip
    started = time.perf_counter()
    trained, results["train"]["arms_at_once"] = train_arms(rows, settings, ev, work)
    results["train"]["seconds"] = round(time.perf_counter() - started, 1)
    results["train"]["arms"] = {arm: {"queries": len(rows[arm]), **metrics} for arm, (_, metrics) in trained.items()}
    scores = {}
    for arm in ARMS:
        if arm in trained and trained[arm][0] is None:
            results["arms"][arm] = {"trained": False}
            continue
        model = trained[arm][0] if arm in trained else settings["model"]
        run = retrieve(model, beir, ev.query_prefix, ev.passage_prefix, ev.top_k, ev.max_seq_len)
        scores[arm] = per_query(run, beir.qrels)
        ndcg = [s["ndcg@10"] for s in scores[arm].values()]
        results["arms"][arm] = {"ndcg@10": round(mean(scores[arm], "ndcg@10"), 4), "recall@100": round(mean(scores[arm], "recall@100"), 4),
                                "ndcg@10_ci95": bootstrap_mean(ndcg, ev.bootstrap_samples, ev.seed)}  # fmt: skip
    for a, b in (("refined", "original"), ("refined", "topk_percpos")):
        if a not in scores or b not in scores:
            results["paired"][f"{a}_vs_{b}"] = {"skipped": f"the {a if a not in scores else b} arm was not trained (no example)"}
            continue
        results["paired"][f"{a}_vs_{b}"] = paired_bootstrap(
            {q: s["ndcg@10"] for q, s in scores[a].items()}, {q: s["ndcg@10"] for q, s in scores[b].items()}, ev.bootstrap_samples, ev.seed
        )
    results["eval"] = {"folder": str(eval_dir), "queries": len(beir.queries), "corpus": len(beir.corpus),
                       "detectable_ndcg@10_difference": detectable_difference([s["ndcg@10"] for s in scores["zero_shot"].values()]),
                       "metrics": "pytrec_eval (trec_eval): ndcg_cut.10 with graded relevance as gains, recall.100"}  # fmt: skip
    out.write_text("evaluate/evaluate.json", json.dumps(results, indent=2))
    out.write_text("evaluate/evaluate.md", render_markdown(results))
    with tempfile.TemporaryDirectory() as tmp:
        render_png(results, Path(tmp) / "evaluate.png")
        out.put(str(Path(tmp) / "evaluate.png"), "evaluate/evaluate.png")
    write_card_section(out, render_markdown(results))
    return results
