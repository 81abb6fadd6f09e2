"""The TopK-PercPos baseline through the same job as ARHN: its decisions against an independent
computation of the rule on real rows, with the teacher's scores recomputed here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import ROOT, SAMPLES, load_jsonl

from arhn_ray.method.topk_percpos import decide, threshold


def _sentence_transformers_keeps(positive: float, candidates: list[float], margin: float) -> list[float]:
    """What sentence-transformers' own ``mine_hard_negatives`` keeps as negatives under
    ``relative_margin``, for a query whose positive and candidates have these cosine scores: a
    model whose embeddings are 2-d unit vectors at those angles from the query's."""
    import math

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    vectors = {"query": [1.0, 0.0]} | {f"t{s}": [s, math.sqrt(1 - s * s)] for s in [positive, *candidates]}

    class Lookup(torch.nn.Module):
        def tokenize(self, texts, **kwargs):
            return {"index": torch.tensor([list(vectors).index(t) for t in texts])}

        def forward(self, features):
            features["sentence_embedding"] = torch.tensor(list(vectors.values()))[features["index"]]
            return features

    model = SentenceTransformer(modules=[Lookup()], device="cpu")
    kept = []
    for n in range(len(candidates), 0, -1):  # the most negatives it finds for the query: all that pass the margin
        rows = mine_hard_negatives(Dataset.from_dict({"anchor": ["query"], "positive": [f"t{positive}"]}), model,
                                   corpus=[f"t{s}" for s in candidates], relative_margin=margin, num_negatives=n,
                                   output_format="n-tuple", verbose=False).to_list()  # fmt: skip
        if rows:
            kept = [float(rows[0][f"negative_{i}"][1:]) for i in range(1, n + 1)]
            break
    return sorted(kept)


def test_the_rule_is_sentence_transformers_relative_margin():
    """Against sentence-transformers' own mine_hard_negatives (6.2: ``pos - |pos| * margin``, from the
    lowest positive), including a negative positive score, where ``pos * (1 - margin)`` would differ."""
    assert threshold(0.8, 0.05) == pytest.approx(0.76) and threshold(-0.5, 0.05) == pytest.approx(-0.525)
    for positive, candidates in ((0.8, [0.9, 0.77, 0.75, 0.5]), (-0.5, [-0.3, -0.49, -0.52, -0.53, -0.7, -0.9])):
        ours = sorted(s for s, (action, _) in zip(candidates, decide(positive, candidates, 0.05)) if action == "keep")
        assert ours == _sentence_transformers_keeps(positive, candidates, 0.05), positive
    assert ours == [-0.9, -0.7, -0.53]  # pos * (1 - margin) = -0.475 would also keep -0.49 and -0.52
    assert decide(0.8, [0.77, 0.76, 0.5, 0.9]) == [("filter", "above_relative_margin"), ("keep", "below_relative_margin"),
                                                  ("keep", "below_relative_margin"), ("filter", "above_relative_margin")]  # fmt: skip


def test_the_margin_is_the_lowest_positives_and_the_kept_are_the_top_k_best_first():
    """sentence-transformers takes the margin from the minimum positive score; NV-Retriever keeps the
    k best-scored negatives under it (the others go, named as such), best first."""
    from arhn_ray.method.topk_percpos import anchor_score, kept_order

    assert anchor_score([0.9, 0.6, 0.8]) == 0.6
    scores = [0.3, 0.58, 0.5, 0.7, 0.1]  # under 0.6 - 0.03 = 0.57: 0.3, 0.5, 0.1
    actions = decide(anchor_score([0.9, 0.6]), scores, 0.05, keep=2)
    assert actions == [("keep", "below_relative_margin"), ("filter", "above_relative_margin"), ("keep", "below_relative_margin"),
                       ("filter", "above_relative_margin"), ("filter", "beyond_top_k")]  # fmt: skip
    assert kept_order(scores, actions) == [2, 0]
    assert [a for a, _ in decide(0.6, scores, 0.05)] == [
        "keep",
        "filter",
        "keep",
        "filter",
        "keep",
    ]  # keep=None: all under the margin


@pytest.mark.ray
def test_the_baseline_runs_through_the_job_and_decides_as_the_rule_says(ray_cluster, tmp_path):
    from sentence_transformers import SentenceTransformer

    from arhn_ray.bundled import minilm_path
    from arhn_ray.cli import main
    from arhn_ray.data.layout import OutputLayout

    rows = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[:3]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert (
        main(
            [
                "refine",
                str(ROOT / "conf" / "local.yaml"),
                "method.name=topk_percpos",
                f"input.path={tmp_path / 'in'}",
                f"output.path={out}",
            ]
        )
        == 0
    )
    refined = {r["query_id"]: r for r in OutputLayout(str(out)).read_rows("refined")}
    assert set(refined) == {r["query_id"] for r in rows}
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["method"], stats["variant"], stats["overall"]["stage1_calls"]) == ("topk_percpos", "topk_percpos", 0)

    model = SentenceTransformer(minilm_path(), device="cpu")  # the same teacher, loaded here on its own
    checked = filtered = 0
    for row in rows:
        positives = model.encode([p["text"] for p in row["positive_passages"]], normalize_embeddings=True)
        q = model.encode([row["query"]], normalize_embeddings=True)[0]
        texts = [n["text"] for n in row["negative_passages"]]
        scores = np.concatenate([[float(min(positives @ q))], model.encode(texts, normalize_embeddings=True) @ q])
        bound = scores[0] - abs(scores[0]) * 0.05
        out_row = refined[row["query_id"]]
        assert out_row["positive_score"] == pytest.approx(float(scores[0]), abs=1e-4)
        for neg, score, decision in zip(row["negative_passages"], scores[1:], out_row["decisions"]):
            assert decision["docid"] == neg["docid"] and decision["score"] == pytest.approx(float(score), abs=1e-4)
            if abs(score - bound) > 1e-4:  # a tie within float noise could go either way
                assert decision["action"] == ("filter" if score > bound else "keep"), (
                    row["query_id"],
                    neg["docid"],
                    score,
                    bound,
                )
                checked += 1
                filtered += decision["action"] == "filter"
        kept = [n["docid"] for n, s in sorted(zip(row["negative_passages"], scores[1:]), key=lambda p: -p[1]) if s <= bound]
        assert [n["docid"] for n in out_row["negative_passages"]] == kept
        assert out_row["positive_passages"] == row["positive_passages"]  # nothing is relabeled
    assert checked >= 70 and 0 < filtered < checked  # both outcomes happen on these rows
    assert not np.isnan([d["score"] for r in refined.values() for d in r["decisions"]]).any()
