"""Labeling rules (issue 2, item 5) with hand-made cases, properties, and the real RLHN samples."""

import ast
import sys

import pytest
from helpers import RLHN_STAGE1, ScriptedEngine, blocks, load_jsonl, make_row, passage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arhn_ray.data.records import validate_row
from arhn_ray.method import labeling as lb
from arhn_ray.method.options import VARIANTS
from arhn_ray.method.prompts import PromptSet
from arhn_ray.refiners.arhn import ArhnRefiner

PROMPTS = PromptSet.load()
ANCHOR = "X is a letter."


def neg_snippet(i):
    return f"Negative passage number {i}."


def refine(row, stage1, stage2, **opts):
    """stage1(chunk) -> list of snippets (None = NO_ANSWER) for [anchor, negs...]; stage2(chunk) -> text."""

    def script(req):
        _, stage, chunk = req.key
        return blocks(stage1(chunk)) if stage == 1 else stage2(chunk)

    engine = ScriptedEngine(script)
    out = ArhnRefiner(engine, lb.MethodOptions(**opts), PROMPTS).refine([row])[0]
    return out, engine


def actions(outcome):
    return [(d["docid"], d["action"], d["reason"]) for d in outcome.row["decisions"]]


def test_rf_relabels_above_filters_below_keeps_no_answer():
    row = make_row(3)
    out, engine = refine(row, lambda c: [ANCHOR, neg_snippet(0), neg_snippet(1), None], lambda c: "[2] > [1] > [3]")
    assert actions(out) == [
        ("n0", "relabel", "ranked_above_positive"),
        ("n1", "filter", "answer_below_positive"),
        ("n2", "keep", "no_answer"),
    ]
    assert [p["docid"] for p in out.row["positive_passages"]] == ["p0", "n0"]
    assert [p["docid"] for p in out.row["negative_passages"]] == ["n2"]
    assert out.row["positive_snippet"] == ANCHOR
    d = out.row["decisions"]
    assert d[0]["rank"] == 1 and d[1]["rank"] == 3 and d[2]["rank"] is None
    assert d[0]["snippet"] == neg_snippet(0) and d[0]["grounding"] == "exact"
    # Stage 2 saw only the anchor and the negatives with a snippet
    stage2_prompt = engine.requests[-1].messages[0]["content"]
    assert "[3] Negative passage number 1." in stage2_prompt and "[4]" not in stage2_prompt


@pytest.mark.parametrize(
    "variant,expected",
    [("relabel", ["relabel", "keep", "keep"]), ("filter", ["keep", "filter", "keep"]), ("rf", ["relabel", "filter", "keep"])],
)
def test_variants_apply_one_rule_each(variant, expected):
    out, _ = refine(
        make_row(3), lambda c: [ANCHOR, neg_snippet(0), neg_snippet(1), None], lambda c: "[2] > [1] > [3]", variant=variant
    )
    assert [a for _, a, _ in actions(out)] == expected


def test_no_stage2_call_when_no_negative_has_a_snippet():
    out, engine = refine(make_row(3), lambda c: [ANCHOR, None, None, None], lambda c: pytest.fail("no Stage 2 expected"))
    assert [a for _, a, _ in actions(out)] == ["keep"] * 3
    assert all(r.key[1] == 1 for r in engine.requests)
    assert out.row["llm"][0]["stage2_text"] is None


def test_paper_literal_sends_all_n_plus_1():
    out, engine = refine(make_row(3), lambda c: [ANCHOR, None, None, None], lambda c: "[1] > [2] > [3] > [4]", paper_literal=True)
    stage2 = [r for r in engine.requests if r.key[1] == 2]
    assert len(stage2) == 1 and "[4] NO_ANSWER" in stage2[0].messages[0]["content"]
    assert [a for _, a, _ in actions(out)] == ["keep"] * 3
    assert [d["rank"] for d in out.row["decisions"]] == [2, 3, 4]


def test_chunks_of_n_share_the_anchor_and_leave_no_negative_unrefined():
    row = make_row(25)
    out, engine = refine(
        row, lambda c: [ANCHOR] + [None] * 10, lambda c: "", max_negatives_per_chunk=10, negatives_per_query=None
    )
    stage1 = [r for r in engine.requests if r.key[1] == 1]
    assert [r.key[2] for r in stage1] == [0, 1, 2]
    for r in stage1:
        assert "doc1:\nPositive passage zero." in r.messages[0]["content"]
    assert "output exactly 6 blocks" in stage1[2].messages[0]["content"]
    assert len(out.row["decisions"]) == 25


def test_later_chunks_rank_the_first_chunks_anchor_snippet():
    """One anchor a row: chunk 1's own (different) anchor answer is not what its Stage 2 ranks."""
    row = make_row(12)
    other = "Positive passage zero."
    out, engine = refine(
        row,
        lambda c: [ANCHOR if c == 0 else other] + [neg_snippet(c * 10 + i) for i in range(10 if c == 0 else 2)],
        lambda c: "[1] > [2] > [3]",
        negatives_per_query=None,
    )
    stage2 = {r.key[2]: r.messages[0]["content"] for r in engine.requests if r.key[1] == 2}
    assert set(stage2) == {0, 1}
    assert f"[1] {ANCHOR}" in stage2[0] and f"[1] {ANCHOR}" in stage2[1] and f"[1] {other}" not in stage2[1]
    assert out.row["positive_snippet"] == ANCHOR and out.row["positive_grounding"] == "exact"


def test_the_llm_reads_title_then_text_and_a_snippet_may_come_from_the_title():
    row = make_row(1, query="who founded acme?")
    row["positive_passages"][0]["title"] = "Acme Corporation"
    row["negative_passages"][0]["title"] = "Jane Doe (founder)"
    out, engine = refine(row, lambda c: ["Acme Corporation Positive passage zero.", "Jane Doe (founder)"], lambda c: "[2] > [1]")
    prompt = engine.requests[0].messages[0]["content"]
    assert "doc1:\nAcme Corporation Positive passage zero. X is a letter." in prompt
    assert "doc2:\nJane Doe (founder) Negative passage number 0." in prompt
    assert out.row["decisions"][0]["snippet"] == "Jane Doe (founder)" and out.row["decisions"][0]["grounding"] == "exact"
    assert actions(out) == [("n0", "relabel", "ranked_above_positive")]
    # the drop-in output keeps the passage as it came, title and text apart
    assert out.row["positive_passages"][1] == row["negative_passages"][0]


def test_an_ungrounded_anchor_snippet_is_ranked_not_taken_as_no_answer():
    paraphrase = "X is one of the letters of the alphabet."  # not in the positive passage
    for literal_off in ({}, {"ungrounded_as_no_answer": True}, {"ungrounded_as_no_answer": False}):
        out, engine = refine(
            make_row(2), lambda c: [paraphrase, neg_snippet(0), neg_snippet(1)], lambda c: "[1] > [3] > [2]", **literal_off
        )
        stage2 = [r for r in engine.requests if r.key[1] == 2]
        assert len(stage2) == 1 and f"[1] {paraphrase}" in stage2[0].messages[0]["content"]
        assert actions(out) == [("n0", "filter", "answer_below_positive"), ("n1", "filter", "answer_below_positive")]
        assert out.row["positive_snippet"] == paraphrase and out.row["positive_grounding"] == "ungrounded"


def test_paper_literal_ranks_a_no_answer_anchor_and_its_ranking_decides():
    out, engine = refine(
        make_row(2), lambda c: [None, neg_snippet(0), neg_snippet(1)], lambda c: "[2] > [1] > [3]", paper_literal=True
    )
    stage2 = [r for r in engine.requests if r.key[1] == 2]
    assert len(stage2) == 1 and "[1] NO_ANSWER" in stage2[0].messages[0]["content"]
    assert actions(out) == [("n0", "relabel", "ranked_above_positive"), ("n1", "filter", "answer_below_positive")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_duplicate_of_the_positive_is_filtered_in_every_variant(variant):
    row = make_row(1)
    row["negative_passages"].append(passage("dup", "Positive passage zero. X is a letter."))
    out, _ = refine(row, lambda c: [ANCHOR, neg_snippet(0)], lambda c: "[2] > [1]", variant=variant)
    assert actions(out)[1] == ("dup", "filter", "duplicate_of_positive")
    assert "dup" not in [p["docid"] for p in out.row["positive_passages"] + out.row["negative_passages"]]


def test_duplicate_detection_survives_unicode_forms():
    row = make_row(1)
    row["positive_passages"] = [passage("p0", "Cafe\u0301 ﬁnances: X is a letter.")]
    row["negative_passages"].append(passage("dup", "  CAFÉ finances -- x is a LETTER"))
    plan = lb.plan_row(row, lb.MethodOptions())
    assert plan.duplicates == [1] and plan.chunks == [[0]]


def test_duplicate_of_positive_is_filtered_and_takes_no_slot():
    row = make_row(2)
    row["negative_passages"].insert(1, passage("dup", "positive PASSAGE zero.  X is a letter!"))
    out, engine = refine(row, lambda c: [ANCHOR, None, None], lambda c: "")
    assert actions(out)[1] == ("dup", "filter", "duplicate_of_positive")
    assert "output exactly 3 blocks" in engine.requests[0].messages[0]["content"]


@pytest.mark.parametrize("policy,action", [("paper", "relabel"), ("keep", "keep")])
def test_positive_no_answer_policies(policy, action):
    out, engine = refine(
        make_row(2), lambda c: [None, neg_snippet(0), None], lambda c: pytest.fail("no Stage 2"), positive_no_answer=policy
    )
    assert actions(out)[0] == ("n0", action, "positive_no_answer")
    assert actions(out)[1] == ("n1", "keep", "no_answer")
    assert out.rejected is None and out.row["positive_grounding"] is None


@pytest.mark.parametrize("policy", ["paper", "keep"])
def test_an_ungrounded_positive_snippet_is_ranked_as_written_and_is_not_a_no_answer(policy):
    """Issue 27: the paper has no grounding step, so an anchor snippet found nowhere in the
    positive is still Stage 2's [1]: the negatives are decided by their rank against it, not by
    ``positive_no_answer`` (under ``paper`` that would relabel every negative with a snippet)."""
    out, engine = refine(make_row(2), lambda c: ["zzz unrelated", neg_snippet(0), neg_snippet(1)], lambda c: "[2] > [1] > [3]",
                         positive_no_answer=policy)  # fmt: skip
    assert actions(out) == [("n0", "relabel", "ranked_above_positive"), ("n1", "filter", "answer_below_positive")]
    assert out.row["positive_grounding"] == "ungrounded" and out.row["positive_snippet"] == "zzz unrelated"
    assert any("zzz unrelated" in r.messages[-1]["content"] for r in engine.requests if r.key[1] == 2)


def test_positive_no_answer_reject():
    out, _ = refine(make_row(2), lambda c: [None, neg_snippet(0), None], lambda c: "", positive_no_answer="reject")
    assert out.rejected == "positive_no_answer"


def test_max_relabeled_cap_rejects_the_row():
    out, _ = refine(
        make_row(3), lambda c: [ANCHOR] + [neg_snippet(i) for i in range(3)], lambda c: "[2] > [3] > [1] > [4]", max_relabeled=1
    )
    assert out.rejected.startswith("max_relabeled")
    ok, _ = refine(
        make_row(3), lambda c: [ANCHOR] + [neg_snippet(i) for i in range(3)], lambda c: "[2] > [3] > [1] > [4]", max_relabeled=2
    )
    assert ok.rejected is None


def test_parse_fallback_filters_negatives_with_a_snippet():
    out, _ = refine(make_row(2), lambda c: [ANCHOR, neg_snippet(0), None], lambda c: "I refuse.")
    assert actions(out)[0] == ("n0", "filter", "parse_fallback")
    assert out.row["llm"][0]["stage2_status"] == "parse_fallback"


def test_ungrounded_counts_as_no_answer_unless_configured():
    fake = "Something the passage never says."
    out, _ = refine(make_row(1), lambda c: [ANCHOR, fake], lambda c: pytest.fail("no Stage 2"))
    assert actions(out)[0] == ("n0", "keep", "ungrounded")
    out, _ = refine(make_row(1), lambda c: [ANCHOR, fake], lambda c: "[2] > [1]", ungrounded_as_no_answer=False)
    assert actions(out)[0] == ("n0", "relabel", "ranked_above_positive")


def test_prhn_ranks_passages_but_no_answer_still_comes_from_stage1():
    out, engine = refine(make_row(2), lambda c: [ANCHOR, neg_snippet(0), None], lambda c: "[2] > [1]", stage2_input="passage")
    prompt = [r for r in engine.requests if r.key[1] == 2][0].messages[0]["content"]
    assert "[2] Negative passage number 0. It talks about topic 0." in prompt
    assert actions(out) == [("n0", "relabel", "ranked_above_positive"), ("n1", "keep", "no_answer")]


def test_engine_error_rejects_only_that_row_after_retries():
    rows = [make_row(1, qid="good"), make_row(1, qid="bad")]
    calls = []

    def script(req):
        calls.append(req.key)
        if req.key[0] == "bad":
            return RuntimeError("HTTP 500")
        return blocks([ANCHOR, None])

    outs = ArhnRefiner(ScriptedEngine(script), lb.MethodOptions(), PROMPTS, retries=2).refine(rows)
    assert outs[0].rejected is None
    assert outs[1].rejected.startswith("engine_error: stage 1 chunk 0") and "HTTP 500" in outs[1].rejected
    assert calls.count(("bad", 1, 0)) == 3


# --- properties -------------------------------------------------------------------------

snippet_choice = st.sampled_from(["anchor", "neg", "none", "fake"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_neg=st.integers(0, 23),
    n_dup=st.integers(0, 2),
    choices=st.lists(snippet_choice, min_size=30, max_size=30),
    stage2_text=st.text(alphabet=st.sampled_from(list("[]0123456789> x")), max_size=40),
    variant=st.sampled_from(VARIANTS),
    policy=st.sampled_from(["paper", "keep"]),
    chunk=st.integers(1, 10),
    literal=st.booleans(),
)
def test_every_negative_gets_exactly_one_decision_and_lists_partition(
    n_neg, n_dup, choices, stage2_text, variant, policy, chunk, literal
):
    row = make_row(n_neg)
    for d in range(n_dup):
        row["negative_passages"].insert(d, passage(f"dup{d}", "Positive passage zero. X is a letter."))

    def stage1(c):
        size = min(chunk, n_neg - c * chunk)
        out = [ANCHOR if choices[0] != "none" else None]
        for j in range(size):
            i = c * chunk + j
            pick = choices[(i + 1) % 30]
            out.append({"anchor": ANCHOR, "neg": neg_snippet(i), "none": None, "fake": "zzz unrelated"}[pick])
        return out

    out, _ = refine(
        row,
        stage1,
        lambda c: stage2_text,
        variant=variant,
        positive_no_answer=policy,
        max_negatives_per_chunk=chunk,
        negatives_per_query=None,
        paper_literal=literal,
    )
    decisions = out.row["decisions"]
    assert [d["docid"] for d in decisions] == [p["docid"] for p in row["negative_passages"]]
    counts = {a: sum(d["action"] == a for d in decisions) for a in ("relabel", "filter", "keep")}
    assert sum(counts.values()) == len(row["negative_passages"])
    pos_ids = [p["docid"] for p in out.row["positive_passages"]]
    neg_ids = [p["docid"] for p in out.row["negative_passages"]]
    filtered = [d["docid"] for d in decisions if d["action"] == "filter"]
    all_in = ["p0"] + [p["docid"] for p in row["negative_passages"]]
    assert sorted(pos_ids + neg_ids + filtered) == sorted(all_in)
    assert len(pos_ids) == 1 + counts["relabel"] and len(neg_ids) == counts["keep"]
    for d in decisions:
        if d["snippet"] is None:
            assert d["action"] == "keep" or d["reason"] == "duplicate_of_positive"
        if d["action"] == "relabel":
            assert variant != "filter"
        if d["action"] == "filter" and d["reason"] != "duplicate_of_positive":
            assert variant != "relabel"


@settings(max_examples=100, deadline=None)
@given(n_neg=st.integers(1, 9), data=st.data())
def test_a_full_ranking_relabels_exactly_the_negatives_above_the_positive(n_neg, data):
    """Issue 27: an oracle the labeling cannot pass by keeping everything. Every negative carries
    a grounded snippet and Stage 2 returns a complete ranking: under rf each negative is relabeled
    iff its document comes before [1], else filtered, and the lists move with the decisions."""
    order = data.draw(st.permutations(list(range(1, n_neg + 2))))
    out, _ = refine(make_row(n_neg), lambda c: [ANCHOR] + [neg_snippet(i) for i in range(n_neg)],
                    lambda c: " > ".join(f"[{i}]" for i in order))  # fmt: skip
    above = set(order[: order.index(1)])
    want = [("relabel", "ranked_above_positive") if i + 2 in above else ("filter", "answer_below_positive") for i in range(n_neg)]
    assert [(a, r) for _, a, r in actions(out)] == want
    assert [p["docid"] for p in out.row["positive_passages"]] == ["p0"] + [f"n{i}" for i in range(n_neg) if i + 2 in above]
    assert out.row["negative_passages"] == []


# --- the real samples --------------------------------------------------------------------


def rlhn_rows():
    return [validate_row(r) for r in load_jsonl(RLHN_STAGE1)]


def test_real_rlhn_rows_make_three_chunks():
    for row in rlhn_rows():
        assert len(row["negative_passages"]) == 25
        plan = lb.plan_row(row, lb.MethodOptions(negatives_per_query=None))
        assert [len(c) for c in plan.chunks] in ([10, 10, 5], [10, 10, 4])


def test_real_pendejo_row_repeats_the_positive():
    row = next(r for r in rlhn_rows() if r["query"] == "pendejo definition")
    plan = lb.plan_row(row, lb.MethodOptions(negatives_per_query=None))
    assert [row["negative_passages"][i]["docid"] for i in plan.duplicates] == ["bd572a5bd7769cf1c205a6052f754a05"]
    assert [len(c) for c in plan.chunks] == [10, 10, 4]
    out, _ = refine(row, lambda c: [None] * (len(plan.chunks[c]) + 1), lambda c: "", negatives_per_query=None)
    dup = next(d for d in out.row["decisions"] if d["docid"] == "bd572a5bd7769cf1c205a6052f754a05")
    assert (dup["action"], dup["reason"]) == ("filter", "duplicate_of_positive")


def test_method_imports_neither_ray_nor_vllm():
    import subprocess

    code = (
        "import sys, arhn_ray.method.labeling, arhn_ray.method.prompts, arhn_ray.method.snippets, "
        "arhn_ray.method.ranking, arhn_ray.method.constraints, arhn_ray.refiners.arhn, arhn_ray.refiners.topk_percpos\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm', 'torch')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    from pathlib import Path

    import arhn_ray.method as m

    for path in Path(m.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [x for x in names if x.split(".")[0] in ("ray", "vllm")], path
