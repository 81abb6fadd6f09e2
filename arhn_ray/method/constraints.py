"""Structured-output constraints as regular expressions (for vLLM / xgrammar and regex-aware servers).

- ``stage1_format``: exactly n blocks ``[[[docK]]]\\n...\\n[[[/docK]]]`` in order.
- ``stage1_verbatim``: the same blocks, each holding NO_ANSWER or a span of 1 to 3 consecutive
  sentences of that document, so every snippet is verbatim by construction.
- ``stage2_format``: ``[i] > [j] > ...`` with n ids drawn from 1..n.
"""

from __future__ import annotations

import re

from arhn_ray.method.prompts import NO_ANSWER

_SENTENCE_END = re.compile(r"(?<=[.!?…])(\s+)|(\n+)")
_SPECIAL = set('\\.^$*+?{}[]()|/-"')
_CONTROL = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f", "\v": "\\v"}


def regex_escape(text: str) -> str:
    """Escape for the regex dialects of xgrammar and outlines (Python's ``re.escape`` over-escapes)."""
    return "".join(_CONTROL.get(c) or ("\\" + c if c in _SPECIAL else c) for c in text)


def sentences(text: str) -> list[str]:
    """Sentences of ``text``, split after . ! ? … and at line breaks, as they stand in it."""
    parts: list[str] = []
    last = 0
    for m in _SENTENCE_END.finditer(text):
        parts.append(text[last : m.start()])
        last = m.end()
    parts.append(text[last:])
    return [p for p in parts if p.strip()]


def sentence_starts(text: str, sents: list[str]) -> list[int]:
    starts, at = [], 0
    for s in sents:
        at = text.index(s, at)
        starts.append(at)
        at += len(s)
    return starts


def _span_alternatives(text: str, max_sentences: int) -> str:
    """Nested alternatives: s1( s2( s3)?)?|s2( s3( s4)?)?|... without repeating whole spans."""
    sents = sentences(text)
    starts = sentence_starts(text, sents)
    alts = []
    for i in range(len(sents)):
        expr = ""
        for j in range(min(len(sents), i + max_sentences) - 1, i, -1):
            sep = text[starts[j - 1] + len(sents[j - 1]) : starts[j]]
            expr = "(" + regex_escape(sep + sents[j]) + expr + ")?"
        alts.append(regex_escape(sents[i]) + expr)
    return "|".join(alts)


def _blocks(bodies: list[str]) -> str:
    return "\\n\\n".join(f"\\[\\[\\[doc{k}\\]\\]\\]\\n({body})\\n\\[\\[\\[/doc{k}\\]\\]\\]" for k, body in enumerate(bodies, 1))


def stage1_format(n_docs: int) -> str:
    """Block structure only; a snippet is one line without brackets. Unbounded: a bound of 400
    characters a block made xgrammar's compile of 11 blocks pass vLLM's 5 s limit on a loaded
    CPU (the request failed); a model looping inside a block is cut by ``max_tokens``."""
    return _blocks(["[^\\[\\]\\n]+"] * n_docs)


def stage1_verbatim(passages: list[str], max_sentences: int = 3) -> str:
    """Each block: NO_ANSWER or 1..max_sentences consecutive sentences of that (neutralised) passage."""
    bodies = []
    for text in passages:
        spans = _span_alternatives(text, max_sentences)
        bodies.append(NO_ANSWER + ("|" + spans if spans else ""))
    return _blocks(bodies)


def stage2_format(n_items: int) -> str:
    ids = "|".join(str(i) for i in range(n_items, 0, -1))
    one = f"\\[({ids})\\]"
    return one + (f"( > {one}){{{n_items - 1}}}" if n_items > 1 else "")
