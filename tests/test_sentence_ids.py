"""Issue 12: Stage 1 by sentence ids. The model answers ids; the snippet is cut from the passage,
so it is verbatim by construction; malformed or out-of-range ids are handled like any other
malformed output; the constraint admits exactly the valid answers."""

from __future__ import annotations

import re

from helpers import ROOT, ScriptedEngine, blocks, make_row
from hypothesis import given, settings
from hypothesis import strategies as st

from arhn_ray.config import load_config, method_options
from arhn_ray.method import labeling as lb
from arhn_ray.method.constraints import sentences
from arhn_ray.method.prompts import PromptSet
from arhn_ray.method.sentence_ids import ground_ids, ids_constraint, numbered, parse_answers, parse_ids, rebuild
from arhn_ray.method.snippets import EXACT, MISSING, OK, UNGROUNDED
from arhn_ray.refiners.arhn import ArhnRefiner

PASSAGE = "Paris is the capital of France. It lies on the Seine!  Its population is about 2 million?\nMuseums abound."

text_st = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)


def test_ids_point_at_sentences_as_they_stand_in_the_passage():
    assert numbered(PASSAGE).splitlines()[1] == "S2: It lies on the Seine!"
    assert ground_ids("S2", PASSAGE, PASSAGE) == ("It lies on the Seine!", EXACT)
    assert ground_ids("S2-S3", PASSAGE, PASSAGE).snippet == "It lies on the Seine!  Its population is about 2 million?"
    assert ground_ids(" s1 – s3 ", PASSAGE, PASSAGE).grounding == EXACT
    assert ground_ids(None, PASSAGE, PASSAGE) == (None, None)  # NO_ANSWER


def test_malformed_and_out_of_range_ids_are_ungrounded():
    for answer in ("S5", "S0", "S1-S4", "S3-S2", "the answer is Paris", "S1, S2", ""):
        assert ground_ids(answer, PASSAGE, PASSAGE) == (None, UNGROUNDED), answer


@settings(max_examples=300, deadline=None)
@given(text_st, text_st)
def test_reading_ids_never_raises_and_a_snippet_is_always_the_passages_own(answer, passage):
    g = ground_ids(answer, passage, passage)
    if g.snippet is not None:
        assert g.grounding == EXACT and g.snippet in passage


@settings(max_examples=200, deadline=None)
@given(text_st)
def test_every_valid_range_rebuilds_its_sentences(passage):
    sents = sentences(passage)
    for a in range(1, len(sents) + 1):
        for b in range(a, min(len(sents), a + 2) + 1):
            span = rebuild(passage, a, b)
            assert span in passage and span.startswith(sents[a - 1]) and span.endswith(sents[b - 1])
            assert parse_ids(f"S{a}-S{b}" if b > a else f"S{a}", len(sents)) == (a, b)


def test_the_constraint_admits_exactly_the_valid_answers():
    regex = re.compile(ids_constraint([PASSAGE, "One sentence."]))
    n = len(sentences(PASSAGE))
    assert n == 4
    valid = {"NO_ANSWER"} | {f"S{a}" + (f"-S{b}" if b > a else "") for a in range(1, 5) for b in range(a, min(4, a + 2) + 1)}
    for body in valid:
        assert regex.fullmatch(f"doc1: {body}\ndoc2: S1"), body
    for body in ("S0", "S5", "S1-S4", "S2-S1", "S1-S1", "Paris", "S1 ", "s1"):
        assert not regex.fullmatch(f"doc1: {body}\ndoc2: S1"), body
    assert not regex.fullmatch("doc1: S1\ndoc2: S2") and not regex.fullmatch("doc2: S1\ndoc1: S1")
    assert len(ids_constraint([PASSAGE] * 11)) < 2000  # a small grammar, not the passages' text


def test_answers_are_read_one_line_per_document_whatever_surrounds_them():
    assert parse_answers("doc1: S2-S3\ndoc2: NO_ANSWER\ndoc3: S1", 3) == [("S2-S3", OK), (None, OK), ("S1", OK)]
    chatty = "<think>doc1: S4</think>Sure, here you go:\n**doc2**: S1\n- doc1 - no answer.\ndoc1: S2\ndoc9: S1"
    assert parse_answers(chatty, 3) == [(None, OK), ("S1", OK), (None, MISSING)]  # the first line for a doc wins
    assert parse_answers(blocks(["S1", None]), 2) == [("S1", OK), (None, OK)]  # the paper's blocks are read too
    assert parse_answers("", 2) == [(None, MISSING)] * 2


@settings(max_examples=300, deadline=None)
@given(text_st, st.integers(1, 12))
def test_reading_answers_never_raises_and_gives_one_result_per_document(text, n):
    parsed = parse_answers(text, n)
    assert len(parsed) == n and all(p.status in (OK, MISSING, "unclosed") for p in parsed)


def test_the_refiner_in_sentence_ids_mode_gives_exact_snippets_and_the_papers_labels():
    row = make_row(3)  # "Negative passage number i. It talks about topic i."
    options = lb.MethodOptions(stage1_output="sentence_ids", stage1_constraint="verbatim")
    lines = "doc1: S2\ndoc2: S1\ndoc3: S1-S2\ndoc4: NO_ANSWER"
    engine = ScriptedEngine(lambda r: lines if r.key[1] == 1 else "[2] > [1] > [3]")
    (out,) = ArhnRefiner(engine, options, PromptSet.load("ids-v1")).refine([row])
    assert out.rejected is None
    stage1 = engine.requests[0]
    assert "S1: Negative passage number 0." in stage1.messages[-1]["content"] and "S3-S5" not in stage1.constraint
    assert re.fullmatch(stage1.constraint, lines)
    d = {x["docid"]: x for x in out.row["decisions"]}
    assert (d["n0"]["action"], d["n0"]["snippet"], d["n0"]["grounding"]) == ("relabel", "Negative passage number 0.", EXACT)
    assert (d["n1"]["action"], d["n1"]["snippet"]) == ("filter", "Negative passage number 1. It talks about topic 1.")
    assert (d["n2"]["action"], d["n2"]["snippet"]) == ("keep", None)
    assert out.row["positive_snippet"] == "X is a letter."
    assert out.row["provenance"]["prompt_version"] == "ids-v1"


def test_config_picks_the_ids_prompt_version_and_the_default_stays_the_papers():
    cfg = load_config(str(ROOT / "conf" / "local.yaml"), ["stage1.output=sentence_ids"])
    assert cfg.prompts.version == "ids-v2" and method_options(cfg).stage1_output == "sentence_ids"
    literal = load_config(str(ROOT / "conf" / "local.yaml"), ["stage1.output=sentence_ids", "prompts.version=paper-v1"])
    assert literal.prompts.version == "ids-v1"
    # the embedded default points at sentences (a first run in minutes); the paper's copied text is one override away
    assert load_config(str(ROOT / "conf" / "local.yaml")).stage1.output == "sentence_ids"
    assert load_config(str(ROOT / "conf" / "local.yaml")).prompts.version == "ids-v2"
    text = load_config(str(ROOT / "conf" / "local.yaml"), ["stage1.output=text"])
    assert text.prompts.version == "paper-v2" and text.stage1.constraint == "verbatim"
    assert load_config(str(ROOT / "conf" / "qwen3-32b-a100x16.yaml")).stage1.output == "text"
