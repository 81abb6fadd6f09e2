"""Stage 1 by sentence ids (``stage1.output: sentence_ids``): the model points, it does not copy.

Each passage goes into the prompt as numbered sentences (``S1: ...``, split as the ``verbatim``
constraint splits them); the model answers one line per document, ``docK: `` then NO_ANSWER,
one id (``S4``) or a range of up to three consecutive ids (``S4-S6``); the snippet is then cut
from the passage itself, so it is verbatim by construction (grounding ``exact``). The decision
space is the ``verbatim`` constraint's (NO_ANSWER or 1-3 consecutive sentences); the output is
~8 tokens a document, not the paper's blocks (~19 tokens of markers alone) around a copied span.

Reading never raises: a document without a line is ``missing``; a malformed answer, an id the
document does not have or a range past three sentences is ``ungrounded``, as any other snippet
that cannot be found in its passage. An answer in the paper's blocks is read as blocks.
"""

from __future__ import annotations

import re

from arhn_ray.method.constraints import sentence_starts, sentences
from arhn_ray.method.prompts import NO_ANSWER
from arhn_ray.method.snippets import (
    EXACT,
    MISSING,
    OK,
    UNGROUNDED,
    Grounded,
    ParsedSnippet,
    has_blocks,
    is_no_answer,
    parse_stage1,
    strip_thinking,
)

MAX_SENTENCES = 3
_IDS = re.compile(r"^\W*S\s*(\d+)\s*(?:(?:-|–|—|to|\.\.)\s*S?\s*(\d+))?\W*$", re.IGNORECASE)
_LINE = re.compile(r"^[^\w\n]*doc[^\S\n]*(\d+)[^\w\n]*(.*)$", re.IGNORECASE | re.MULTILINE)


def numbered(passage: str) -> str:
    """The passage as the prompt shows it: one ``S<i>: sentence`` line per sentence."""
    return "\n".join(f"S{i}: {s.strip()}" for i, s in enumerate(sentences(passage), 1))


def ids_constraint(passages: list[str], max_sentences: int = MAX_SENTENCES) -> str:
    """Line k: ``doc<k>: `` then NO_ANSWER, or ``Sa`` / ``Sa-Sb`` with 1 <= a < b <= n and b - a < max_sentences."""
    lines = []
    for k, passage in enumerate(passages, 1):
        n = len(sentences(passage))
        alts = [
            f"S{a}" + (f"-S{b}" if b > a else "") for a in range(1, n + 1) for b in range(a, min(n, a + max_sentences - 1) + 1)
        ]
        lines.append(f"doc{k}: (" + "|".join([NO_ANSWER, *alts]) + ")")
    return "\\n".join(lines)


def parse_answers(text: str, n_docs: int) -> list[ParsedSnippet]:
    """One result per document 1..n_docs, from its first ``docK: answer`` line (None is
    NO_ANSWER, the answer text otherwise); a document without a line is missing."""
    body = strip_thinking(text)
    if has_blocks(body):
        return parse_stage1(body, n_docs)
    found: dict[int, ParsedSnippet] = {}
    for m in _LINE.finditer(body):
        doc, answer = int(m.group(1)), m.group(2).strip()
        if 1 <= doc <= n_docs and doc not in found:
            found[doc] = ParsedSnippet(None if is_no_answer(answer) else answer, OK)
    return [found.get(d, ParsedSnippet(None, MISSING)) for d in range(1, n_docs + 1)]


def parse_ids(answer: str | None, n_sentences: int, max_sentences: int = MAX_SENTENCES) -> tuple[int, int] | None | str:
    """``(a, b)`` for a valid id or range, None for NO_ANSWER, ``"malformed"`` for anything else."""
    if answer is None:
        return None
    m = _IDS.match(answer.strip())
    if not m:
        return "malformed"
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) else a
    if not 1 <= a <= b <= n_sentences or b - a >= max_sentences:
        return "malformed"
    return a, b


def rebuild(passage: str, a: int, b: int) -> str:
    """Sentences a..b (1-based) as they stand in the passage, separators included."""
    sents = sentences(passage)
    starts = sentence_starts(passage, sents)
    return passage[starts[a - 1] : starts[b - 1] + len(sents[b - 1])]


def ground_ids(answer: str | None, passage: str, neutral: str) -> Grounded:
    """The snippet an id answer points at, cut from ``passage``. Sentences are counted in
    ``neutral`` (the text the prompt showed; same length as the passage)."""
    ids = parse_ids(answer, len(sentences(neutral)))
    if ids is None:
        return Grounded(None, None)
    if ids == "malformed":
        return Grounded(None, UNGROUNDED)
    a, b = ids  # type: ignore[misc]
    span = rebuild(neutral, a, b)
    at = sentence_starts(neutral, sentences(neutral))[a - 1]
    return Grounded(passage[at : at + len(span)], EXACT)
