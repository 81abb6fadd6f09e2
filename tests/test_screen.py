"""Issue 33: the paper's N negatives a query, the teacher screen in front of Stage 1, and the
calibration that says which k a screen may use. No Ray, no vLLM: a scripted engine answers, the
screen's teacher is the real bundled MiniLM."""

from __future__ import annotations

import json

import pytest
from helpers import SAMPLES, ScriptedEngine, blocks, load_jsonl, make_row

from arhn_ray.data.readers import from_flagembedding
from arhn_ray.data.records import validate_row
from arhn_ray.method import labeling as lb
from arhn_ray.method.passages import passage_text
from arhn_ray.method.prompts import PromptSet, neutralize
from arhn_ray.outputs.calibrate import calibrate, kappa, render, screened_labels, sweep
from arhn_ray.outputs.stats import RunStats
from arhn_ray.refiners.arhn import ArhnRefiner

PROMPTS = PromptSet.load()


def shipped_rows() -> list[dict]:
    rows = [validate_row(r) for r in load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")]
    return rows + [validate_row(from_flagembedding(r)) for r in load_jsonl(SAMPLES / "flagembedding_msmarco.jsonl")]


def no_answer(req) -> str:
    """Stage 1: every document NO_ANSWER but the anchor (the prompt's document count read back)."""
    n = req.messages[0]["content"].count("\ndoc") or 1
    return blocks(["anchor"] + [None] * (n - 1))


def test_the_papers_n_makes_one_stage1_call_a_query_and_accounts_for_every_negative_past_it():
    rows = shipped_rows()
    assert len(rows) == 20 and {len(r["negative_passages"]) for r in rows} == {25}  # the chunked path stays testable
    engine = ScriptedEngine(no_answer)
    outcomes = ArhnRefiner(engine, lb.MethodOptions(negatives_per_query=10), PROMPTS).refine([dict(r) for r in rows])
    stage1 = [r for r in engine.requests if r.key[1] == 1]
    assert sorted(r.key[0] for r in stage1) == sorted(r["query_id"] for r in rows)  # one call a query, chunk 0 only
    stats = RunStats()
    for row, out in zip(rows, outcomes):
        decisions = out.row["decisions"]
        assert [d["docid"] for d in decisions] == [p["docid"] for p in row["negative_passages"]]
        judged = [i for i, d in enumerate(decisions) if d["reason"] != "duplicate_of_positive"][:10]
        past = [i for i, d in enumerate(decisions) if d["reason"] != "duplicate_of_positive"][10:]
        assert all(decisions[i]["action"] == "keep" for i in judged)
        dups = sum(d["reason"] == "duplicate_of_positive" for d in decisions)
        assert len(past) == 15 - dups and len(judged) == 10
        assert [(decisions[i]["action"], decisions[i]["reason"]) for i in past] == [
            ("unjudged", "past_negatives_per_query")
        ] * len(past)
        kept = {p["docid"] for p in out.row["negative_passages"] + out.row["positive_passages"]}
        assert not kept & {decisions[i]["docid"] for i in past}  # no LLM judged them: not in the refined row
        stats.add_refined(out.row)
    o = stats.to_dict()["overall"]
    dups = o["filter"]  # duplicates of the positive, filtered with no call (one in the sample)
    assert dups == 1 and o["unjudged"] == 15 * 20 - dups and o["stage1_calls"] == 20 and o["judged"] == 10 * 20
    assert o["no_answer_rate"] == 1.0  # of the judged, not of all 25


def test_null_judges_every_negative_in_chunks():
    engine = ScriptedEngine(no_answer)
    (out,) = ArhnRefiner(engine, lb.MethodOptions(negatives_per_query=None), PROMPTS).refine([make_row(25)])
    assert [r.key[2] for r in engine.requests] == [0, 1, 2]
    assert {d["action"] for d in out.row["decisions"]} == {"keep"}


class Recorder:
    """A teacher stand-in that scores by a table; records what it was asked."""

    model = "table"

    def __init__(self, scores: dict[str, float]):
        self.scores, self.pairs = scores, []

    def score(self, pairs):
        self.pairs += pairs
        return [self.scores[p] for _, p in pairs]

    def close(self) -> None:
        pass


def test_the_screen_sends_its_top_k_keeps_the_rest_as_screened_and_records_every_score():
    row = make_row(6)
    texts = [passage_text(p) for p in row["negative_passages"]]
    scores = dict(zip(texts, [0.1, 0.9, 0.3, 0.8, 0.2, 0.7]))
    engine = ScriptedEngine(
        lambda r: blocks(["anchor", "Negative passage number 1.", None, None]) if r.key[1] == 1 else "[2] > [1]"
    )
    refiner = ArhnRefiner(engine, lb.MethodOptions(screen_top_k=3), PROMPTS, screen=Recorder(scores))
    (out,) = refiner.refine([dict(row)])
    (stage1,) = [r for r in engine.requests if r.key[1] == 1]
    sent = [i for i, t in enumerate(texts) if t in stage1.messages[0]["content"]]
    assert sent == [1, 3, 5]  # the three best-scored, in the miner's order
    d = out.row["decisions"]
    assert [(x["action"], x["reason"]) for x in d] == [("keep", "screened"), ("relabel", "ranked_above_positive"),
                                                      ("keep", "screened"), ("keep", "no_answer"), ("keep", "screened"),
                                                      ("keep", "no_answer")]  # fmt: skip
    assert [x["score"] for x in d] == [0.1, 0.9, 0.3, 0.8, 0.2, 0.7]
    # staged: Stage 2 (another replica) plans again from the row, with the scores it carries, and asks its teacher nothing
    (first,) = refiner.stage1([dict(row)])
    other = Recorder(scores)
    (second,) = ArhnRefiner(engine, lb.MethodOptions(screen_top_k=3), PROMPTS, screen=other).stage2([first.row])
    assert other.pairs == [] and second.row["decisions"] == d


def test_the_screen_sends_exactly_the_real_teachers_top_k_by_an_independent_scoring():
    """The bundled MiniLM as the screen; the top k computed apart, with sentence-transformers directly."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from arhn_ray import bundled
    from arhn_ray.refiners.teacher import Teacher

    rows = shipped_rows()[:3]
    model = SentenceTransformer(bundled.resolve("bundled:minilm"), device="cpu")
    engine = ScriptedEngine(no_answer)
    refiner = ArhnRefiner(engine, lb.MethodOptions(screen_top_k=4), PROMPTS, screen=Teacher("bundled:minilm"))
    outcomes = refiner.refine([dict(r) for r in rows])
    for row, out in zip(rows, outcomes):
        plan = lb.plan_row(row, lb.MethodOptions())
        judged = plan.judged
        q = model.encode([row["query"]], normalize_embeddings=True)[0]
        p = model.encode([passage_text(row["negative_passages"][i]) for i in judged], normalize_embeddings=True)
        want = sorted(judged[j] for j in np.argsort(-(p @ q), kind="stable")[:4])
        (request,) = [r for r in engine.requests if r.key[0] == row["query_id"] and r.key[1] == 1]
        prompt = request.messages[0]["content"]
        sent = [i for i in judged if neutralize(passage_text(row["negative_passages"][i])) in prompt]
        assert sent == want
        scored = [
            d["score"] for d in out.row["decisions"] if d["reason"] not in ("duplicate_of_positive", "past_negatives_per_query")
        ]
        assert np.allclose(scored, p @ q, atol=1e-4)


def test_screen_top_k_needs_a_teacher_and_is_at_least_one(tmp_path):
    from helpers import ROOT

    from arhn_ray.config import ConfigError, load_config

    conf = str(ROOT / "conf" / "local.yaml")
    with pytest.raises(ConfigError, match="'screen.top_k': a screen needs a teacher"):
        load_config(conf, ["screen.top_k=4"])
    with pytest.raises(ConfigError, match="'screen.top_k': must be at least 1"):
        load_config(conf, ["screen.model=bundled:minilm", "screen.top_k=0"])
    with pytest.raises(ConfigError, match="'method.negatives_per_query': must be at least 1"):
        load_config(conf, ["method.negatives_per_query=0"])


# --- calibrate: the arithmetic against a case worked by hand ------------------------------------

D = lambda action, score: {"action": action, "reason": "x", "score": score}  # noqa: E731


def test_calibrate_kappa_and_recalls_on_a_hand_built_case():
    """Two queries, 4 judged negatives each (8 in all), Stage 1 prompts of 500 and 1,000 tokens.

    q1 by score: relabel .9, filter .8, keep .7, keep .1; q2: keep .9, filter .6, relabel .5, keep .2.
    Full labels (changed?): q1 T T F F, q2 F T T F: 4 changed of 8.
    k=1: sent q1[0], q2[0] -> changed: q1 T F F F, q2 F F F F: agreement 5/8, p_e = (4/8)(1/8)+(4/8)(7/8) = 1/2,
         kappa = (5/8 - 1/2) / (1/2) = 0.25; relabel recall 1/2, filter recall 0/2.
    k=2: q1 T T F F, q2 F T F F: agreement 7/8, p_e = (4/8)(3/8)+(4/8)(5/8) = 1/2, kappa = 0.75;
         relabel recall 1/2, filter recall 2/2.
    k=3: identical labels: kappa 1. Documents: 8 + 2 anchors = 10 full; k=1: 4 (saved 60%).
    Tokens k=1: 500 x 2/5 + 1000 x 2/5 = 600 of 1,500: saved 60%."""
    q1 = [D("relabel", 0.9), D("filter", 0.8), D("keep", 0.7), D("keep", 0.1)]
    q2 = [D("keep", 0.9), D("filter", 0.6), D("relabel", 0.5), D("keep", 0.2)]
    result = sweep([(q1, [500]), (q2, [1000])], threshold=0.7)
    by_k = {r["k"]: r for r in result["sweep"]}
    assert by_k[1]["kappa"] == pytest.approx(0.25) and by_k[2]["kappa"] == pytest.approx(0.75) and by_k[3]["kappa"] == 1.0
    assert (by_k[1]["relabel_recall"], by_k[1]["filter_recall"]) == (0.5, 0.0)
    assert (by_k[2]["relabel_recall"], by_k[2]["filter_recall"]) == (0.5, 1.0)
    assert by_k[1]["documents_saved"] == pytest.approx(0.6) and by_k[1]["prompt_tokens_saved"] == pytest.approx(0.6)
    assert by_k[4]["documents_saved"] == 0.0 and result["smallest_k"] == 2
    assert screened_labels(q2, 2) == ["keep", "filter", "keep", "keep"]
    assert kappa([True, False], [True, False]) == 1.0 and kappa([True, True], [False, False]) == 0.0


def write_output(folder, rows: list[dict]):
    """Refined rows in an output folder's layout (refined/<shard>/<part>.parquet), as the sink writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from arhn_ray.data.records import OUTPUT_SCHEMA

    (folder / "refined" / "sample").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), folder / "refined" / "sample" / "p0.parquet")
    return folder


def test_calibrate_reads_an_output_and_refuses_one_without_scores(tmp_path, capsys):
    from arhn_ray.cli import main
    from arhn_ray.outputs.calibrate import NotACalibrationRun

    rows = [dict(make_row(3, qid=f"q{i}")) for i in range(2)]
    engine = ScriptedEngine(
        lambda r: blocks(["anchor", "Negative passage number 0.", None, None]) if r.key[1] == 1 else "[2] > [1]"
    )
    screen = Recorder({passage_text(p): s for p, s in zip(rows[0]["negative_passages"], [0.2, 0.9, 0.5])})
    outcomes = ArhnRefiner(engine, lb.MethodOptions(), PROMPTS, screen=screen).refine(rows)
    out = write_output(tmp_path / "calib", [o.row for o in outcomes])
    result = calibrate(str(out))
    assert result["queries"] == 2 and result["judged"] == 6 and [r["k"] for r in result["sweep"]] == [1, 2, 3]
    assert result["sweep"][0]["relabel_recall"] == 0.0 and result["smallest_k"] == 3  # n0, the relabel, scores lowest
    assert (out / "calibrate.png").stat().st_size > 0 and json.loads((out / "calibrate.json").read_text())["smallest_k"] == 3
    assert all(len(line) <= 80 for line in render(result).splitlines())
    assert main(["calibrate", str(out)]) == 0 and "smallest k with kappa >= 0.9: 3" in capsys.readouterr().out
    plain = ArhnRefiner(ScriptedEngine(no_answer), lb.MethodOptions(), PROMPTS).refine([make_row(3)])
    bare = write_output(tmp_path / "bare", [o.row for o in plain])
    with pytest.raises(NotACalibrationRun, match="screen.top_k=null"):
        calibrate(str(bare))
    assert main(["calibrate", str(bare)]) == 2
