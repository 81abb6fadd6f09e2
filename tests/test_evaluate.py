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
    assert main(["evaluate", str(out), "--eval", str(EVAL), "max_seq_len=64", "negatives=3", "batch_size=8", "bootstrap_samples=200",
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
        assert train["arms"][arm]["steps"] >= 1 and 0 < train["arms"][arm]["train_loss"] < 10, train["arms"][arm]
    # the session cluster declares 24 CPUs and its memory (~17 GiB here) holds three 2 GiB workers: the three
    # one-worker arms train side by side, so the training took less than their own times added up
    assert train["arms_at_once"] == 3 and all(train["arms"][a]["peak_rss_gb"] > 0 for a in ("original", "refined", "topk_percpos"))
    assert train["seconds"] < sum(train["arms"][a]["seconds"] for a in ("original", "refined", "topk_percpos")), train
    assert (out / "evaluate" / "evaluate.png").stat().st_size > 0 and "| refined |" in (out / "evaluate" / "evaluate.md").read_text()
    card = (out / "README.md").read_text()
    assert card.count("## Retrieval evaluation") == 1 and "checks the loop, not the method" in card
    assert json.loads((out / "evaluate" / "topk_percpos" / "stats.json").read_text())["method"] == "topk_percpos"
