"""`arhn-ray evaluate`: a BEIR folder read strictly, nDCG@10 against an independent computation,
and the whole loop (baseline, three trained arms, zero-shot) on the shipped evaluation set."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from helpers import ROOT, SAMPLES, load_jsonl

from arhn_ray.evaluate.beir import BeirError, load_beir

EVAL = ROOT / "arhn_ray" / "evaluate" / "msmarco_beir"


def test_the_shipped_eval_set_is_read_and_holds_no_training_query():
    beir = load_beir(EVAL)
    assert (len(beir.queries), len(beir.corpus)) == (13, 650)
    assert not set(beir.queries) & {r["query_id"] for r in load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "queries.jsonl").unlink(), "queries.jsonl: missing"),
        (lambda d: (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "q\tnope\t1\n"), "test.tsv: line 2: query-id 'q'"),
        (lambda d: (d / "qrels" / "test.tsv").open("a").write(f"{load_beir(EVAL).queries.popitem()[0]}\tno-such-doc\t1\n"),
         "test.tsv: line 15: corpus-id 'no-such-doc' is not in corpus.jsonl"),
        (lambda d: (d / "corpus.jsonl").open("a").write("{not json\n"), "corpus.jsonl: line 651: invalid JSON"),
    ],
)  # fmt: skip
def test_a_malformed_eval_folder_fails_naming_the_file_and_the_line(tmp_path, damage, message):
    folder = tmp_path / "eval"
    shutil.copytree(EVAL, folder)
    damage(folder)
    with pytest.raises(BeirError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_beir(folder)


def test_zero_shot_ndcg_equals_an_independent_computation():
    """The untrained MiniLM's nDCG@10 on the shipped set by pytrec_eval, and by hand here: binary
    judgments, so a query's nDCG@10 is 1/log2(1 + rank of its relevant passage) within the top 10."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from arhn_ray.data.truncation import minilm_tokenizer_path
    from arhn_ray.evaluate.metrics import mean, per_query
    from arhn_ray.evaluate.retrieve import retrieve

    beir = load_beir(EVAL)
    ours = mean(per_query(retrieve(minilm_tokenizer_path(), beir), beir.qrels), "ndcg@10")
    model = SentenceTransformer(minilm_tokenizer_path(), device="cpu")
    model.max_seq_length = 256
    ids = list(beir.corpus)
    docs = model.encode([beir.corpus[d] for d in ids], normalize_embeddings=True)
    by_hand = []
    for q, text in beir.queries.items():
        order = np.argsort(-(docs @ model.encode([text], normalize_embeddings=True)[0]))
        ranked = [ids[j] for j in order[:10]]
        relevant = [i for i, d in enumerate(ranked, 1) if beir.qrels[q].get(d, 0) > 0]
        by_hand.append(1 / math.log2(1 + relevant[0]) if relevant else 0.0)
    assert ours == pytest.approx(float(np.mean(by_hand)), abs=1e-4)
    assert 0.0 < ours < 1.0


GIB = 2.0**30


@pytest.mark.parametrize(
    ("workers", "use_gpu", "memory_gb", "cluster", "asked", "expected"),
    [
        (8, True, None, {"GPU": 16.0, "CPU": 64.0}, 0, 2),  # the A100 config: two 8-GPU arms at once, the third after
        (8, True, None, {"GPU": 24.0}, 0, 3),
        (8, True, None, {"GPU": 4.0}, 0, 1),  # fewer GPUs than one arm asks: one at a time (Ray waits for room)
        (1, False, None, {"CPU": 2.0, "GPU": 16.0}, 0, 2),  # on CPU the CPUs count, not declared GPUs
        (1, False, None, {"CPU": 24.0}, 0, 3),  # never more than the arms
        (1, False, 10.0, {"CPU": 24.0, "memory": 17 * GIB}, 0, 1),  # this machine: memory holds one 10 GiB worker
        (1, False, 10.0, {"CPU": 24.0, "memory": 45 * GIB}, 0, 3),
        (1, False, None, {"CPU": 24.0}, 1, 1),  # evaluate.arms_at_once=1: one after another
    ],
)
def test_arms_train_side_by_side_as_far_as_the_cluster_holds_them(workers, use_gpu, memory_gb, cluster, asked, expected):
    from arhn_ray.evaluate.train import arms_at_once, worker_resources

    per_worker = worker_resources(use_gpu, memory_gb)
    assert per_worker == ({"GPU": 1.0} if use_gpu else {"CPU": 1.0}) | ({"memory": memory_gb * GIB} if memory_gb else {})
    assert arms_at_once(3, workers, per_worker, cluster, asked) == expected


def test_a_memory_reservation_no_node_can_grant_is_dropped_not_waited_for():
    """A 16 GB laptop gives Ray ~10 GiB: an 11 GiB worker would never be scheduled."""
    from arhn_ray.evaluate.train import reservable, worker_resources

    per_worker = worker_resources(False, 11.0)
    assert reservable(per_worker, 1, {"CPU": 8.0, "memory": 10 * GIB}) == {"CPU": 1.0}
    assert reservable(per_worker, 1, {"CPU": 8.0, "memory": 17 * GIB}) == per_worker
    assert reservable(worker_resources(True, None), 8, {"GPU": 16.0}) == {"GPU": 1.0}
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.evaluate.train import arm_layout

    # what evaluate and plan both decide: without the reservation the arms go one at a time, even if more were asked
    assert arm_layout(EvaluateConfig(arms_at_once=3), {"CPU": 8.0, "memory": 10 * GIB}) == ({"CPU": 1.0}, 1)
    assert arm_layout(EvaluateConfig(arms_at_once=3), {"CPU": 8.0, "memory": 40 * GIB}) == (per_worker, 3)


@pytest.mark.ray
def test_evaluate_runs_the_loop_and_writes_every_field(ray_cluster, tmp_path):
    """An ARHN output of the shipped sample (replayed), evaluated on the shipped set: the baseline is
    run on the fly, three arms are trained (small settings: the loop, not the method), and the
    JSON, table, picture and card section are written."""
    from test_deploy import _recordings

    from arhn_ray.cli import main

    rec, n = _recordings(tmp_path)
    out = tmp_path / "out"
    assert main(["refine", str(ROOT / "conf" / "replay.yaml"), f"engine.replay_path={rec}", f"output.path={out}"]) == 0
    # a batch larger than every arm (the bundled model's refined arm had 6 examples for a batch of 16): each trains on what it has
    assert main(["evaluate", str(out), "--eval", str(EVAL), "max_seq_len=64", "negatives=3", "batch_size=64", "bootstrap_samples=200",
                 "worker_memory_gb=2"]) == 0  # fmt: skip
    result = json.loads((out / "evaluate" / "evaluate.json").read_text())
    assert set(result["arms"]) == {"zero_shot", "original", "refined", "topk_percpos"}
    for arm in result["arms"].values():
        assert 0.0 <= arm["ndcg@10"] <= 1.0 and 0.0 <= arm["recall@100"] <= 1.0 and arm["ndcg@10_ci95"][0] <= arm["ndcg@10_ci95"][1]
    for pair in ("refined_vs_original", "refined_vs_topk_percpos"):
        p = result["paired"][pair]
        assert p["queries"] == 13 and p["ci95"][0] <= p["delta"] <= p["ci95"][1] and p["inconclusive"] == (p["ci95"][0] <= 0 <= p["ci95"][1])
    train = result["train"]
    assert train["arms"]["original"]["queries"] == n == train["arms"]["refined"]["queries"] == train["arms"]["topk_percpos"]["queries"]
    assert train["hyperparameters"]["negatives"] == 3 and train["hyperparameters"]["model"] == "bundled:minilm"
    for arm in ("original", "refined", "topk_percpos"):  # each arm was trained: steps taken, a finite contrastive loss
        t = train["arms"][arm]
        assert t["steps"] >= 1 and 0 < t["train_loss"] < 10, t
        assert 0 < t["examples"] < 64 and t["batch_size"] == t["examples"], t  # the trainer's own batch: the arm, not 64
    assert result["eval"]["detectable_ndcg@10_difference"] > 0.01
    # the session cluster declares 24 CPUs and its memory (~17 GiB here) holds three 2 GiB workers: the three
    # one-worker arms train side by side, so the training took less than their own times added up
    assert train["arms_at_once"] == 3 and all(train["arms"][a]["peak_rss_gb"] > 0 for a in ("original", "refined", "topk_percpos"))
    assert train["seconds"] < sum(train["arms"][a]["seconds"] for a in ("original", "refined", "topk_percpos")), train
    assert (out / "evaluate" / "evaluate.png").stat().st_size > 0 and "| refined |" in (out / "evaluate" / "evaluate.md").read_text()
    card = (out / "README.md").read_text()
    assert card.count("## Retrieval evaluation") == 1 and "checks the loop, not the method" in card
    assert json.loads((out / "evaluate" / "topk_percpos" / "stats.json").read_text())["method"] == "topk_percpos"


@pytest.mark.ray
def test_an_arm_with_no_example_is_reported_not_trained_and_the_report_says_so(ray_cluster, tmp_path):
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.evaluate.report import render_markdown
    from arhn_ray.evaluate.run import train_arms

    no_negatives = [{"query_id": "q", "query": "q?", "positive_passages": [{"docid": "p", "title": "", "text": "p"}],
                     "negative_passages": [], "subset": "s"}]  # fmt: skip
    trained, _ = train_arms({"original": [], "refined": no_negatives, "topk_percpos": []}, {}, EvaluateConfig(), tmp_path)
    assert trained["refined"] == (None, {"examples": 0, "trained": False})
    results = {"eval": {"queries": 13, "corpus": 650, "folder": "x", "metrics": "m", "detectable_ndcg@10_difference": 0.05},
               "train": {"hyperparameters": {"model": "m"}, "arms": {a: m for a, (_, m) in trained.items()}},
               "arms": {"zero_shot": {"ndcg@10": 0.5, "recall@100": 1.0, "ndcg@10_ci95": [0.4, 0.6]}, "refined": {"trained": False}},
               "paired": {"refined_vs_original": {"skipped": "the refined arm was not trained (no example)"}}}  # fmt: skip
    text = render_markdown(results)
    assert "| refined | 0 | - | - | not trained" in text and "refined - original: not computed" in text


def test_the_detectable_difference_comes_from_the_spread_and_is_never_zero_for_a_varied_set():
    from arhn_ray.evaluate.run import detectable_difference

    same = [0.2, 0.9, 0.5, 0.7] * 3 + [0.1]  # 13 queries whose arms might all rank alike (a paired interval of width 0)
    import statistics

    assert detectable_difference(same) == round(1.96 * 2**0.5 * statistics.stdev(same) / 13**0.5, 4) > 0.1
    assert detectable_difference([0.5] * 13) == 0.0 and detectable_difference([0.5]) == 1.0


def test_the_paired_bootstrap_is_paired():
    """Against an independent computation: the mean per-query difference, and an interval that only a
    paired resampling makes this narrow (the two arms vary a lot, their difference hardly at all)."""
    import numpy as np

    from arhn_ray.evaluate.metrics import paired_bootstrap

    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 200)
    a = {f"q{i}": float(v + 0.02 + rng.normal(0, 0.005)) for i, v in enumerate(base)}
    b = {f"q{i}": float(v) for i, v in enumerate(base)}
    b["only_b"] = 0.3  # a query one arm lacks is left out
    p = paired_bootstrap(a, b, 2000, 0)
    diffs = [a[q] - b[q] for q in a]
    assert p["queries"] == 200 and abs(p["delta"] - sum(diffs) / 200) < 1e-4
    assert p["ci95"][0] > 0.015 and p["ci95"][1] < 0.025 and not p["inconclusive"]
    # an unpaired bootstrap of the same numbers: the arms' own spread makes the interval hold 0
    unpaired = [rng.choice(list(a.values()), 200).mean() - rng.choice(base, 200).mean() for _ in range(2000)]
    lo, hi = np.percentile(unpaired, [2.5, 97.5])
    assert lo < 0 < hi and not (p["ci95"][0] <= 0 <= p["ci95"][1])
