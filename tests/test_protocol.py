"""Issue 34: arms that differ only in their labels (the paper's protocol: one instance a query an
epoch), seeds, RLHN's published rows as an arm and as agreement's reference, and the two test
holes (the several-sets interval, sentence-transformers' relative margin). No Ray here."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import RLHN_STAGE1, RLHN_STAGE2, load_jsonl, make_row
from test_outputs import rlhn_verdicts

from arhn_ray.data.export import training_examples
from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.records import OUTPUT_SCHEMA, validate_row
from arhn_ray.evaluate.examples import write_examples


def with_positives(row: dict, n: int) -> dict:
    """``row`` with ``n`` positives: the first ``n - 1`` negatives relabeled, as ARHN moves them."""
    return {**row, "positive_passages": row["positive_passages"] + row["negative_passages"][: n - 1],
            "negative_passages": row["negative_passages"][n - 1 :]}  # fmt: skip


def test_one_instance_a_query_an_epoch_whatever_its_positives():
    row = with_positives(make_row(12), 3)
    per_epoch = [training_examples(row, 7, seed=0, epoch=e) for e in range(20)]
    assert all(len(x) == 1 for x in per_epoch)  # one, not one a positive
    drawn = {x[0]["positive"] for x in per_epoch}
    assert len(drawn) == 3  # every positive is drawn over 20 epochs (each 1/3)
    assert per_epoch == [training_examples(row, 7, seed=0, epoch=e) for e in range(20)]  # seeded: the same again
    negatives = {tuple(x[0][f"negative_{i}"] for i in range(1, 8)) for x in per_epoch}
    assert len(negatives) > 1  # drawn again each epoch
    assert len(training_examples(row, 7, rule="per-positive")) == 3  # the named option: one a positive


def test_arms_of_the_same_queries_write_the_same_examples_whatever_their_positives(tmp_path):
    """The original rows (one positive) and refined rows (one to three): the same number of
    examples, so the same number of steps, and a query with no negative left is counted."""
    original = [make_row(10, qid=f"q{i}") for i in range(6)]
    refined = [with_positives(r, 1 + i % 3) for i, r in enumerate(original)]
    refined[5] = {**refined[5], "negative_passages": []}  # nothing left to train on
    out = OutputLayout(str(tmp_path))
    _, n_orig, q_orig, none_orig = write_examples(original, out, "original", 7, seed=0, epochs=5)
    _, n_ref, q_ref, none_ref = write_examples(refined, out, "refined", 7, seed=0, epochs=5)
    assert (n_orig, q_orig, none_orig) == (30, 6, 0)
    assert (n_ref, q_ref, none_ref) == (25, 5, 1)  # 5 queries x 5 epochs; the sixth counted
    # the per-positive rule would have given the refined arm 1+2+3+1+2 = 9 a epoch: 45, not 25
    assert sum(len(training_examples(r, 7, rule="per-positive")) for r in refined[:5]) * 5 == 45


def test_export_writes_one_row_a_query_by_default_and_refuses_to_write_nothing(tmp_path, capsys):
    from arhn_ray.cli import main

    rows = [with_positives(make_row(9, qid=f"q{i}"), 3) for i in range(4)]
    out = tmp_path / "out"
    (out / "refined" / "s").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), out / "refined" / "s" / "p.parquet")
    assert main(["export", str(out), "--format", "sentence-transformers", "--out", str(tmp_path / "a.parquet")]) == 0
    assert pq.read_table(tmp_path / "a.parquet").num_rows == 4
    assert main(["export", str(out), "--format", "sentence-transformers", "--examples", "per-positive",
                 "--out", str(tmp_path / "b.parquet")]) == 0  # fmt: skip
    assert pq.read_table(tmp_path / "b.parquet").num_rows == 12
    empty = tmp_path / "empty"
    (empty / "refined" / "s").mkdir(parents=True)
    none = [{**r, "negative_passages": []} for r in rows]
    pq.write_table(pa.Table.from_pylist(none, schema=OUTPUT_SCHEMA), empty / "refined" / "s" / "p.parquet")
    capsys.readouterr()
    assert main(["export", str(empty), "--format", "sentence-transformers", "--out", str(tmp_path / "c.parquet")]) == 3
    assert "no training row" in capsys.readouterr().err


def test_seeds_average_per_query_and_report_their_spread():
    from arhn_ray.evaluate.run import _seed_spread, by_arm

    q = lambda v: {"a": {"ndcg@10": v, "recall@100": 1.0}, "b": {"ndcg@10": v / 2, "recall@100": 1.0}}  # noqa: E731
    scores = {"zero_shot": [q(0.2)], "refined@0": [q(0.4)], "refined@1": [q(0.6)], "original@0": [q(0.5)], "original@1": [q(0.5)]}
    arms = by_arm(scores, [0, 1])
    assert arms["refined"][0]["a"]["ndcg@10"] == pytest.approx(0.5) and arms["refined"][0]["b"]["ndcg@10"] == pytest.approx(0.25)
    results = {"arms": {"refined": {}, "original": {}, "zero_shot": {}}}
    _seed_spread(results, {"set": {k: v[0] for k, v in scores.items()}}, [0, 1])
    assert results["arms"]["refined"]["seeds"] == {0: 0.3, 1: 0.45}
    assert results["arms"]["refined"]["ndcg@10_seed_sd"] == pytest.approx(float(np.std([0.3, 0.45], ddof=1)), abs=1e-4)
    assert "seeds" not in results["arms"]["zero_shot"]


def test_extra_arms_are_named_pairs():
    from arhn_ray.evaluate.arms import extra_arms

    assert extra_arms(["rlhn=hf://datasets/rlhn/rlhn-680K@abc", "mine=s3://b/out/refined"]) == {
        "rlhn": "hf://datasets/rlhn/rlhn-680K@abc", "mine": "s3://b/out/refined"}  # fmt: skip
    for bad in ("rlhn", "=x", "refined=x", "a b=x"):
        with pytest.raises(ValueError, match="--arm"):
            extra_arms([bad])


# --- RLHN's published rows as agreement's reference ----------------------------------------------


def rlhn_refined_rows() -> list[dict]:
    """RLHN's cleaning of its own sample as rlhn-680K publishes it (Tevatron rows): the negatives its
    verdicts call better than the positive moved into the positives (stage 2 deciding the queries it
    re-judged), the rest left as negatives."""
    verdicts = {}
    for r in load_jsonl(RLHN_STAGE1):
        verdicts.update(rlhn_verdicts(r))
    for r in load_jsonl(RLHN_STAGE2):
        verdicts = {**{k: v for k, v in verdicts.items() if k[0] != r["query_id"]}, **rlhn_verdicts(r)}
    rows = []
    for r in load_jsonl(RLHN_STAGE1):
        row = validate_row(r)
        fn = [n for n in row["negative_passages"] if verdicts[(row["query_id"], n["docid"])] == "false_negative"]
        rest = [n for n in row["negative_passages"] if n not in fn]
        rows.append({**row, "positive_passages": row["positive_passages"] + fn, "negative_passages": rest})
    return rows


def test_agreement_against_refined_rows_by_where_each_docid_went(tmp_path):
    from sklearn.metrics import cohen_kappa_score

    from arhn_ray.outputs.agreement import is_row_dataset, render, rows_agreement

    reference = rlhn_refined_rows()
    ref_file = tmp_path / "rlhn.jsonl"
    # one negative of the first query removed from the reference (a filter of its own)
    gone = reference[0]["negative_passages"].pop(0)["docid"]
    ref_file.write_text("".join(json.dumps(r) + "\n" for r in reference))
    assert is_row_dataset(str(ref_file)) and not is_row_dataset(str(RLHN_STAGE1))
    # an output of three queries: its own labels, hand-chosen; the fourth query is not in the reference
    ours = []
    for r in [validate_row(x) for x in load_jsonl(RLHN_STAGE1)[:3]] + [make_row(3, qid="not-in-rlhn")]:
        actions = ["filter" if i % 4 == 0 else "relabel" if i % 7 == 3 else "keep" for i in range(len(r["negative_passages"]))]
        actions[0] = "filter" if r["query_id"] != "not-in-rlhn" else actions[0]
        decisions = [{"docid": n["docid"], "action": a, "reason": "x", "snippet": None, "grounding": None, "rank": None, "score": None}
                     for n, a in zip(r["negative_passages"], actions)]  # fmt: skip
        decisions[-1]["reason"] = "past_negatives_per_query"  # not a judgment: left out
        ours.append({**r, "decisions": decisions})
    out = tmp_path / "out"
    (out / "refined" / "s").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ours, schema=OUTPUT_SCHEMA), out / "refined" / "s" / "p.parquet")
    result = rows_agreement(str(out), str(ref_file))
    by_query = {r["query_id"]: r for r in reference}
    theirs, mine = [], []
    for row in ours[:3]:
        pos = {p["docid"] for p in by_query[row["query_id"]]["positive_passages"]}
        neg = {p["docid"] for p in by_query[row["query_id"]]["negative_passages"]}
        for d in row["decisions"][:-1]:
            theirs.append("relabel" if d["docid"] in pos else "keep" if d["docid"] in neg else "removed")
            mine.append({"filter": "removed"}.get(d["action"], d["action"]))
    assert "removed" in theirs and theirs.count("relabel") >= 1 and result["overall"]["n"] == len(theirs) == 3 * 24
    assert result["overall"]["kappa"] == pytest.approx(cohen_kappa_score(theirs, mine), abs=1e-4)
    assert (result["queries"], result["queries_missing"]) == (3, 1)
    assert result["overall"]["confusion"]["matrix"][2][2] >= 1 and gone in {d["docid"] for d in ours[0]["decisions"]}
    assert all(len(line) <= 80 for line in render({**result, "reference": "rlhn.jsonl"}).splitlines())


# --- the two test holes -----------------------------------------------------------------------


def test_the_several_sets_interval_resamples_within_each_set():
    """Against an independent computation. Degenerate first: a set of 1,000 zeros and one of 10
    ones average to 0.5 in every within-set resample (pooling all queries gives ~0.01); then a
    varied case whose interval is compared with a bootstrap written here."""
    from arhn_ray.evaluate.scoring import bootstrap_mean, paired_bootstrap_sets

    assert bootstrap_mean([[0.0] * 1000, [1.0] * 10], 500, 0) == [0.5, 0.5]
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0, 0.2, 400), rng.uniform(0.6, 1.0, 20)
    got = bootstrap_mean([list(a), list(b)], 4000, 1)
    own = np.random.default_rng(99)
    means = [(own.choice(a, a.size).mean() + own.choice(b, b.size).mean()) / 2 for _ in range(4000)]
    want = np.percentile(means, [2.5, 97.5])
    assert got == pytest.approx(list(want), abs=0.006)
    pooled = np.percentile([own.choice(np.concatenate([a, b]), 420).mean() for _ in range(2000)], [2.5, 97.5])
    assert abs(pooled[0] - got[0]) > 0.1  # a pooled resampling is far from it: the check can tell them apart
    diffs = paired_bootstrap_sets([({f"q{i}": 1.0 for i in range(1000)}, {f"q{i}": 1.0 for i in range(1000)}),
                                   ({"x": 1.0, "y": 1.0}, {"x": 0.0, "y": 0.0})], 500, 0)  # fmt: skip
    assert diffs["delta"] == 0.5 and diffs["ci95"] == [0.5, 0.5]
