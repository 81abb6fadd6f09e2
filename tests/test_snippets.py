"""Stage 1 parsing and grounding: every rule of issue 2, items 2 and 3."""

from hypothesis import given, settings
from hypothesis import strategies as st

from arhn_ray.method.snippets import (
    EXACT,
    FUZZY,
    MISSING,
    NORMALIZED,
    OK,
    UNCLOSED,
    UNGROUNDED,
    ground,
    parse_stage1,
    strip_thinking,
)


def texts(result):
    return [r.text for r in result]


def test_well_formed_blocks():
    out = "[[[doc1]]]\nParis is the capital.\n[[[/doc1]]]\n\n[[[doc2]]]\nNO_ANSWER\n[[[/doc2]]]"
    res = parse_stage1(out, 2)
    assert texts(res) == ["Paris is the capital.", None]
    assert [r.status for r in res] == [OK, OK]


def test_think_block_and_chatter_are_ignored():
    out = "<think>doc1 says [[[doc1]]] wrong [[[/doc1]]]</think>Sure! Here:\n[[[doc1]]]\nright\n[[[/doc1]]]\nHope it helps."
    assert texts(parse_stage1(out, 1)) == ["right"]


def test_unclosed_think_hides_everything_after_it():
    assert strip_thinking("[[[doc1]]]\na\n[[[/doc1]]]<think>[[[doc2]]]b") == "[[[doc1]]]\na\n[[[/doc1]]]"
    assert texts(parse_stage1("<think>[[[doc1]]] a [[[/doc1]]]", 1)) == [None]


def test_missing_extra_duplicated_out_of_order():
    out = (
        "[[[doc3]]]\nthird\n[[[/doc3]]]\n"
        "[[[doc1]]]\nfirst\n[[[/doc1]]]\n"
        "[[[doc1]]]\nfirst again\n[[[/doc1]]]\n"
        "[[[doc9]]]\nextra\n[[[/doc9]]]"
    )
    res = parse_stage1(out, 3)
    assert texts(res) == ["first", None, "third"]
    assert [r.status for r in res] == [OK, MISSING, OK]


def test_missing_closing_marker_and_no_blank_lines():
    out = "[[[doc1]]]first[[[/doc1]]][[[doc2]]]second[[[doc3]]]third"
    res = parse_stage1(out, 3)
    assert texts(res) == ["first", "second", "third"]
    assert [r.status for r in res] == [OK, UNCLOSED, UNCLOSED]


def test_closed_block_replaces_an_earlier_unclosed_one():
    out = "[[[doc1]]]cut off[[[doc1]]]whole[[[/doc1]]]"
    assert texts(parse_stage1(out, 1)) == ["whole"]


def test_no_answer_variants():
    variants = [
        "NO_ANSWER",
        "no_answer",
        "NO_ANSWER.",
        '"NO_ANSWER"',
        "`NO_ANSWER`",
        "No Answer",
        "**NO_ANSWER**",
        "  ",
        "'no-answer'",
    ]
    out = "".join(f"[[[doc{i}]]]\n{v}\n[[[/doc{i}]]]\n" for i, v in enumerate(variants, 1))
    assert texts(parse_stage1(out, len(variants))) == [None] * len(variants)


def test_quotes_around_snippet_are_removed_and_text_kept():
    out = '[[[doc1]]]\n"The answer is 42."\n[[[/doc1]]]'
    assert texts(parse_stage1(out, 1)) == ["The answer is 42."]


def test_code_fences():
    out = "```text\n[[[doc1]]]\nfenced\n[[[/doc1]]]\n```"
    assert texts(parse_stage1(out, 1)) == ["fenced"]


def test_lenient_single_bracket_markers():
    out = "[doc1]\nshort form\n[/doc1]\n[[[ doc2 ]]]\nspaced\n[[[ /doc2 ]]]"
    assert texts(parse_stage1(out, 2)) == ["short form", "spaced"]


def test_nothing_readable():
    for junk in ["", "I cannot help with that.", "NO_ANSWER", None, 42]:
        res = parse_stage1(junk, 2)
        assert [(r.text, r.status) for r in res] == [(None, MISSING), (None, MISSING)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]/doc123 \nNO_ANSWER<think>`'\"x")), max_size=300), st.integers(1, 12))
def test_parse_never_raises_and_returns_one_result_per_doc(text, n):
    res = parse_stage1(text, n)
    assert len(res) == n
    assert all(r.status in (OK, UNCLOSED, MISSING) for r in res)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.integers(1, 12))
def test_parse_never_raises_on_any_unicode(text, n):
    assert len(parse_stage1(text, n)) == n


PASSAGE = "The  Eiffel Tower is in PARIS.\nIt was built in 1889 for the World’s Fair."


def test_ground_exact():
    assert ground("built in 1889", PASSAGE) == ("built in 1889", EXACT)


def test_ground_normalized_snaps_to_the_passage_text():
    g = ground("the eiffel tower is in paris.", PASSAGE)
    assert g == ("The  Eiffel Tower is in PARIS.", NORMALIZED)
    g = ground("PARIS. It was built", PASSAGE)
    assert g == ("PARIS.\nIt was built", NORMALIZED)


def test_ground_normalized_unicode():
    passage = "Café ﬁnances in ２０２０ were good."
    assert ground("café finances in 2020", passage) == ("Café ﬁnances in ２０２０", NORMALIZED)


def test_ground_fuzzy_snaps_and_respects_threshold():
    g = ground("It was built in 1898 for the Worlds Fair", PASSAGE, fuzzy_threshold=85)
    assert g.grounding == FUZZY
    assert g.snippet in PASSAGE and "1889" in g.snippet
    assert ground("It was built in 1898 for the Worlds Fair", PASSAGE, fuzzy_threshold=99.5).grounding == UNGROUNDED


def test_ground_ungrounded_and_no_answer():
    assert ground("The Colosseum is in Rome", PASSAGE) == (None, UNGROUNDED)
    assert ground(None, PASSAGE) == (None, None)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_ground_never_raises_and_grounded_snippets_are_in_the_passage(snippet, passage):
    g = ground(snippet, passage)
    if g.snippet is not None:
        assert g.snippet in passage
        assert g.grounding in (EXACT, NORMALIZED, FUZZY)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.sampled_from(["a", "NO_ANSWER", " x ", "", "[y]", "\n"]), st.booleans()), max_size=8
    ),
    st.integers(1, 6),
)
def test_fast_path_agrees_with_the_general_parser(parts, n):
    from arhn_ray.method.snippets import _parse_general

    text = "\n\n".join(f"[[[doc{d}]]]\n{c}\n" + (f"[[[/doc{d}]]]" if closed else "") for d, c, closed in parts)
    assert parse_stage1(text, n) == _parse_general(text, n)
