"""The loop from cleaned data to a trained retriever, laid out as the paper's Table 1: one
retriever per arm with identical hyperparameters and seeds (``original`` rows as they came in,
``refined`` rows, the ``topk_percpos`` baseline's rows; ``zero_shot`` untrained), each scored on
one or more BEIR-format sets; per set and on average (all sets, and the paper's out-of-domain
ones), nDCG@10 with the paired per-query differences and their bootstrap 95% intervals. Writes
``OUTPUT/evaluate/evaluate.json``, ``evaluate.md``, ``evaluate.png`` and a section of the card.

Everything large lives on the output's storage, where every node reaches it: the arms' examples,
Ray Train's runs and checkpoints, the corpus embeddings (``evaluate/examples``, ``train``,
``embeddings``); the driver holds queries, judgments and scores."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from arhn_ray import bundled
from arhn_ray.config import Config, EvaluateConfig, load_config
from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.records import original_row
from arhn_ray.evaluate.arms import dataset_rows, extra_arms, only, output_queries
from arhn_ray.evaluate.beir import OOD, BeirSet, load_beir
from arhn_ray.evaluate.examples import write_examples
from arhn_ray.evaluate.heartbeat import Heartbeat
from arhn_ray.evaluate.report import render_png, table1_markdown, write_card_section
from arhn_ray.evaluate.retrieve import encode_corpus, encode_queries, search
from arhn_ray.evaluate.scoring import bootstrap_mean, mean, paired_bootstrap_sets, per_query
from arhn_ray.evaluate.train import arm_layout, global_batch, in_process, train_arm, train_in_process
from arhn_ray.outputs.saved import saved_config
from arhn_ray.pipeline.placement import init_ray

log = logging.getLogger(__name__)
TRAINED = ("original", "refined", "topk_percpos")
PAIRS = (("refined", "original"), ("refined", "topk_percpos"))
SETTINGS = ("model", "query_prefix", "passage_prefix", "max_seq_len", "batch_size", "mini_batch_size", "lr", "warmup_ratio",
            "epochs", "negatives", "seed", "workers", "use_gpu")  # fmt: skip


def run_name(arm: str, seed: int, seeds: list[int]) -> str:
    """A training run's name: the arm's, with its seed when several seeds repeat it."""
    return arm if len(seeds) == 1 else f"{arm}@{seed}"


def baseline_output(cfg: Config, out: OutputLayout, baseline: str | None) -> OutputLayout:
    """A given TopK-PercPos output, or the baseline run now on the same input (its top-k: the
    negatives an example takes, unless ``baseline.keep`` says otherwise)."""
    if baseline:
        return OutputLayout(baseline, out.storage_options)
    from arhn_ray.pipeline.job import run

    path = f"{out.path.rstrip('/')}/evaluate/topk_percpos"  # with its protocol: out.file() is the store's bare path
    target = OutputLayout(path, out.storage_options)
    if not target.exists(layout.STATS):
        with tempfile.TemporaryDirectory() as tmp:
            OmegaConf.save(OmegaConf.structured(cfg), f"{tmp}/config.yaml")
            run(load_config(f"{tmp}/config.yaml", ["method.name=topk_percpos", "pipeline.mode=fused", f"output.path={path}",
                                                   f"baseline.keep={cfg.baseline.keep or cfg.evaluate.negatives}"]))  # fmt: skip
    return target


def train_arms(
    sources: dict[str, Callable[[], Iterable[dict]]],
    settings: dict[str, Any],
    ev: EvaluateConfig,
    out: OutputLayout,
    here: bool = False,
) -> tuple[dict[str, tuple[Any, dict]], int]:
    """Writes each run's examples (an arm per seed of ``evaluate.seeds``: one instance a query an
    epoch, drawn with that seed), then trains every run, side by side as far as the cluster holds
    them (each its own Ray Train run; identical settings), or one after the other in this process
    (``here``: train.py's ``in_process``). Returns each run's checkpoint (None: not trained) and
    metrics, and how many runs trained at once."""
    import ray

    seeds = list(ev.seeds)
    runs = {run_name(arm, seed, seeds): (arm, seed) for arm in sources for seed in seeds}
    cluster = ray.cluster_resources()
    per_worker, at_once = arm_layout(ev, cluster, len(runs))
    at_once = 1 if here else at_once  # one process, one trainer: its seeds and accelerate's state are the process's
    if ev.worker_memory_gb and "memory" not in per_worker:
        log.warning("evaluate: Ray has %.1f GiB of memory here, less than an arm's %d worker(s) x %g GiB (evaluate.worker_memory_gb): "
                    "the arms train one at a time, without reserving it; lower evaluate.batch_size or max_seq_len if one runs "
                    "out of memory", cluster.get("memory", 0.0) / 2**30, ev.workers, ev.worker_memory_gb)  # fmt: skip
    written = {}
    for name, (arm, seed) in runs.items():
        written[name] = folder, n, queries, none = write_examples(sources[arm](), out, name, ev.negatives, seed, ev.query_prefix,
                                                                   ev.passage_prefix, epochs=ev.epochs)  # fmt: skip
        log.info("evaluate: the %s arm: %d training examples (%d queries x %d epochs; %d queries gave none: no positive or no "
                 "negative left)", name, n, queries, ev.epochs, none, extra={"notice": True})  # fmt: skip
    if here:
        log.info("evaluate: training %d runs one after the other in this process (one worker, no cluster address: "
                 "evaluate.trainer=ray_train for Ray Train)", len(runs), extra={"notice": True})  # fmt: skip
    else:
        log.info("evaluate: training %d runs, %d at a time (%d worker(s) each, a worker reserves %s)", len(runs), at_once, ev.workers,
                 ", ".join(f"{v / 2**30:g} GiB memory" if k == "memory" else f"{v:g} {k}" for k, v in per_worker.items()), extra={"notice": True})  # fmt: skip

    def one(name: str) -> tuple[Any, dict[str, Any]]:
        folder, n, queries, none = written[name]
        counts = {"examples": n, "queries": queries, "queries_without_example": none, "seed": runs[name][1]}
        batch = global_batch(ev.batch_size, queries, ev.workers)
        if not batch:
            log.warning("evaluate: the %s arm has examples from %d queries, fewer than its %d worker(s): not trained", name, queries,
                        ev.workers)  # fmt: skip
            return None, {**counts, "trained": False}
        for attempt in (1, 2):  # a loaded machine trips Ray Train's health checks once in a while: once more
            try:
                arm = {**settings, "seed": runs[name][1]}
                checkpoint, metrics = (train_in_process(name, folder, batch, arm, out) if here else
                                       train_arm(name, folder, batch, arm, per_worker, out))  # fmt: skip
                return checkpoint, {**counts, "trained": True, **metrics, "attempts": attempt,
                                    "trainer": "in_process" if here else "ray_train"}  # fmt: skip
            except Exception as e:  # one arm's failure is named, the others go on
                why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
                log.warning("evaluate: the %s arm failed to train (attempt %d of 2): %s", name, attempt, why)
        log.error(
            "evaluate: the %s arm was not trained (%s); the table leaves it out: rerun evaluate to train it again", name, why
        )
        return None, {**counts, "trained": False, "error": why}

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="arhn-arm") as pool:
        return dict(zip(runs, pool.map(one, runs))), at_once


def by_arm(scores: dict[str, list[dict]], seeds: list[int]) -> dict[str, list[dict]]:
    """Each arm's per-query scores, averaged over its seeds' runs (a query every run of it has)."""
    arms: dict[str, list[str]] = {}
    for name in scores:
        arms.setdefault(name.split("@")[0], []).append(name)
    out = {}
    for arm, names in arms.items():
        sets = []
        for per_set in zip(*(scores[n] for n in names)):
            queries = set.intersection(*(set(s) for s in per_set))
            sets.append({q: {m: sum(s[q][m] for s in per_set) / len(per_set) for m in per_set[0][q]} for q in queries})
        out[arm] = sets
    return out


def detectable_difference(ndcg: list[float]) -> float:
    """The nDCG@10 difference the set could resolve: 1.96 x sqrt(2) x the per-query spread of the
    untrained model / sqrt(queries), i.e. two arms whose per-query scores vary as much and are not
    correlated. From the spread, not from a paired interval: arms that rank alike give an interval
    of width 0, which says nothing about the set."""
    import statistics

    if len(ndcg) < 2:
        return 1.0
    return round(1.96 * 2**0.5 * statistics.stdev(ndcg) / len(ndcg) ** 0.5, 4)


def score_set(
    beir: BeirSet, models: dict[str, Any], ev: EvaluateConfig, out: OutputLayout
) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm, per query, nDCG@10 and Recall@100 on one set: its corpus encoded once by every
    model in a Ray Data pool, then each arm's top-k searched block by block."""
    import ray

    encoders = ev.encoders or (int(ray.cluster_resources().get("GPU", 0)) if ev.use_gpu else 1) or 1
    fs, target = out.arrow_filesystem(), out.file(layout.evaluate_file(f"embeddings/{beir.name}"))
    if out.fs.exists(target):
        out.fs.rm(target, recursive=True)
    started = time.perf_counter()
    log.info("evaluate: encoding %s (%d passages) with %d models on %d encoder(s)", beir.name, beir.corpus_size, len(models), encoders,
             extra={"notice": True})  # fmt: skip
    encode_corpus(beir.corpus_path, models, ev, encoders, target, fs)
    queries = encode_queries(beir.queries, models, ev, encoders)
    log.info("evaluate: %s encoded in %.0f s; searching the top %d of each query", beir.name, time.perf_counter() - started, ev.top_k,
             extra={"notice": True})  # fmt: skip
    return {
        arm: per_query(search(target, fs, arm, *queries[arm], ev.top_k, beir.corpus_size, ev.search_block), beir.qrels)
        for arm in models
    }


def summarize(scores: dict[str, list[dict[str, dict[str, float]]]], ev: EvaluateConfig) -> dict[str, Any]:
    """Arms' nDCG@10 and Recall@100 averaged over the sets given (each set weighing the same), with
    bootstrap intervals, and the paired differences."""
    arms = {arm: {"ndcg@10": round(sum(mean(s, "ndcg@10") for s in sets) / len(sets), 4),
                  "recall@100": round(sum(mean(s, "recall@100") for s in sets) / len(sets), 4),
                  "ndcg@10_ci95": bootstrap_mean([[q["ndcg@10"] for q in s.values()] for s in sets], ev.bootstrap_samples, ev.seed)}
            for arm, sets in scores.items()}  # fmt: skip
    paired = {}
    extra = [(a, "original") for a in scores if a not in (*TRAINED, "zero_shot")]  # --arm NAME=PATH: against the original rows
    for a, b in (*PAIRS, *extra):
        if a not in scores or b not in scores:
            paired[f"{a}_vs_{b}"] = {"skipped": f"the {a if a not in scores else b} arm was not trained"}
            continue
        sets = [
            ({q: v["ndcg@10"] for q, v in sa.items()}, {q: v["ndcg@10"] for q, v in sb.items()})
            for sa, sb in zip(scores[a], scores[b])
        ]
        paired[f"{a}_vs_{b}"] = paired_bootstrap_sets(sets, ev.bootstrap_samples, ev.seed)
    return {"arms": arms, "paired": paired}


def evaluate(output: str, eval_dirs: str | list[str], overrides: list[str] | None = None, baseline: str | None = None,
             storage_options: dict | None = None, arms: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Table 1 for ``output``: ``arms`` (``NAME=PATH``) add refined datasets beside the built-in arms."""
    out = OutputLayout(output, storage_options)
    cfg = saved_config(out, [f"evaluate.{o}" if not o.startswith("evaluate.") else o for o in overrides or []])
    ev = cfg.evaluate
    extra = extra_arms(arms)
    sets = [load_beir(d, ev.split) for d in ([eval_dirs] if isinstance(eval_dirs, str) else eval_dirs)]
    if len({s.name for s in sets}) < len(sets):
        raise ValueError(f"--eval: two folders share a name ({', '.join(s.name for s in sets)}): the table names sets by folder")
    settings = {k: getattr(ev, k) for k in SETTINGS} | {"model": bundled.resolve(ev.model)}
    topk = baseline_output(cfg, out, baseline)
    init_ray(cfg.pipeline.ray_address)
    import ray

    ctx = ray.data.DataContext.get_current()  # the datasets made here carry it to the encoders and the trainer's workers
    saved, ctx.enable_progress_bars = ctx.enable_progress_bars, cfg.pipeline.progress and cfg.pipeline.ray_progress_bars
    try:  # Ray Data's bars off: the workers' bars reached the terminal after evaluate's last line
        with Heartbeat().running() as beat:
            return _evaluate(cfg, out, topk, sets, extra, settings, storage_options, beat)
    finally:
        ctx.enable_progress_bars = saved


def _evaluate(cfg: Config, out: OutputLayout, topk: OutputLayout, sets: list[BeirSet], extra: dict[str, str],
              settings: dict[str, Any], storage_options: dict | None, beat: Heartbeat) -> dict[str, Any]:  # fmt: skip
    ev = cfg.evaluate
    queries = output_queries(out)
    sources: dict[str, Callable[[], Iterable[dict]]] = {
        "original": lambda: (original_row(r) for r in out.read_rows("refined")),  # the input rows, from the output alone
        "refined": lambda: out.read_rows("refined"),
        "topk_percpos": lambda: only(topk.read_rows("refined"), queries),
        **{name: (lambda path=path: only(dataset_rows(path, storage_options), queries)) for name, path in extra.items()},
    }
    started = time.perf_counter()
    beat.phase(f"training {', '.join(sources)} ({len(sources) * len(ev.seeds)} runs)")
    here = in_process(ev.trainer, ev.workers, cfg.pipeline.ray_address or os.environ.get("RAY_ADDRESS"))
    trained, at_once = train_arms(sources, settings, ev, out, here)
    results: dict[str, Any] = {"train": {"hyperparameters": {**settings, "model": ev.model, "seeds": list(ev.seeds)},
                                         "baseline_output": topk.path, "extra_arms": extra, "queries": len(queries),
                                         "arms_at_once": at_once, "seconds": round(time.perf_counter() - started, 1),
                                         "arms": {name: m for name, (_, m) in trained.items()}}, "sets": {}}  # fmt: skip
    models = {"zero_shot": settings["model"], **{name: ckpt for name, (ckpt, _) in trained.items() if ckpt is not None}}
    per_run: dict[str, dict[str, Any]] = {}
    for beir in sets:
        beat.phase(f"scoring {beir.name}: encoding {beir.corpus_size:,} passages with {len(models)} models, then searching")
        per_run[beir.name] = score_set(beir, models, ev, out)
        zero = [s["ndcg@10"] for s in per_run[beir.name]["zero_shot"].values()]
        results["sets"][beir.name] = {"folder": beir.corpus_path.rsplit("/", 1)[0], "queries": len(beir.queries), "corpus": beir.corpus_size,
                                      "ood": beir.name.lower() in OOD, "detectable_ndcg@10_difference": detectable_difference(zero),
                                      **summarize(by_arm({r: [v] for r, v in per_run[beir.name].items()}, ev.seeds), ev)}  # fmt: skip
    groups = {"all": list(per_run)} | (
        {"ood": ood} if (ood := [n for n in per_run if n.lower() in OOD]) and len(per_run) > 1 else {}
    )
    results["average"] = {
        g: {"sets": names, **summarize(by_arm({r: [per_run[n][r] for n in names] for r in models}, ev.seeds), ev)}
        for g, names in groups.items()
    }
    results["arms"], results["paired"] = results["average"]["all"]["arms"], results["average"]["all"]["paired"]
    _seed_spread(results, per_run, list(ev.seeds))
    for arm in sources:
        results["arms"].setdefault(arm, {"trained": False})
    results["eval"] = {"sets": list(per_run), "queries": sum(s["queries"] for s in results["sets"].values()),
                       "metrics": "pytrec_eval (trec_eval): ndcg_cut.10 with graded relevance as gains, recall.100",
                       "search": f"exact inner product of normalized embeddings (FAISS, {ev.search_block} passages at a time), top {ev.top_k}"}  # fmt: skip
    out.write_text(layout.evaluate_file("evaluate.json"), json.dumps(results, indent=2, default=str))
    out.write_text(layout.evaluate_file("evaluate.md"), table1_markdown(results))
    with tempfile.TemporaryDirectory() as tmp:
        render_png(results, Path(tmp) / "evaluate.png")
        out.put(str(Path(tmp) / "evaluate.png"), layout.evaluate_file("evaluate.png"))
    write_card_section(out, table1_markdown(results))
    return results


def _seed_spread(results: dict[str, Any], per_run: dict[str, dict[str, Any]], seeds: list[int]) -> None:
    """Each arm's nDCG@10 per seed (averaged over the sets) and their standard deviation, beside its mean."""
    import statistics

    if len(seeds) < 2:
        return
    for arm, m in results["arms"].items():
        runs = [run_name(arm, seed, seeds) for seed in seeds]
        if arm == "zero_shot" or not all(r in per_run[next(iter(per_run))] for r in runs):
            continue
        by_seed = {
            seed: round(sum(mean(per_run[n][r], "ndcg@10") for n in per_run) / len(per_run), 4) for seed, r in zip(seeds, runs)
        }
        m["seeds"], m["ndcg@10_seed_sd"] = by_seed, round(statistics.stdev(by_seed.values()), 4)
