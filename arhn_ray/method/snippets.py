"""Stage 1 output: read one snippet (or NO_ANSWER) per document, then ground it in its passage.

Parsing never raises: whatever a model returns (think blocks, chatter, missing, duplicated or
out-of-order blocks, an unclosed last block, code fences, ``no_answer.``), each document gets
exactly one result. Grounding keeps the paper's promise that a snippet is verbatim: a snippet
that cannot be found in its passage is ``ungrounded`` and counts as NO_ANSWER by default.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from rapidfuzz import fuzz

_MARKER = re.compile(r"\[{1,3}[ \t]*(/?)[ \t]*doc[ \t]*(\d+)[ \t]*\]{1,3}", re.IGNORECASE)
_WELL_FORMED = re.compile(r"\[\[\[doc(\d+)\]\]\]([^\[]*)\[\[\[/doc\1\]\]\]")
_FENCE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
_NO_ANSWER = re.compile(r"^[\W_]*no[\s_-]*answer[\W_]*$", re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»"

EXACT, NORMALIZED, FUZZY, UNGROUNDED = "exact", "normalized", "fuzzy", "ungrounded"
# parse status of one document's block
OK, UNCLOSED, MISSING = "ok", "unclosed", "missing"


class ParsedSnippet(NamedTuple):
    text: str | None  # None is NO_ANSWER
    status: str  # ok | unclosed | missing


class Grounded(NamedTuple):
    snippet: str | None  # the passage's own span, or None
    grounding: str | None  # exact | normalized | fuzzy | ungrounded; None for NO_ANSWER


def strip_thinking(text: str) -> str:
    """Keep what follows the last ``</think>``; an unclosed ``<think>`` hides everything after it."""
    if not isinstance(text, str):
        return ""
    if "hink>" not in text and "HINK>" not in text:
        return text
    low = text.lower()
    end = low.rfind("</think>")
    if end >= 0:
        return text[end + len("</think>") :]
    start = low.find("<think>")
    return text[:start] if start >= 0 else text


def is_no_answer(answer: str) -> bool:
    """NO_ANSWER as models write it: ``NO_ANSWER``, ``no answer.``, ``**No-Answer**``, or nothing."""
    return not answer.strip() or bool(_NO_ANSWER.match(answer.strip()))


def has_blocks(text: str) -> bool:
    """Whether ``text`` holds any ``[[[docK]]]`` marker (leniently: one to three brackets)."""
    return _MARKER.search(text) is not None


def _clean(content: str) -> str | None:
    content = content.strip()
    while len(content) >= 2 and content[0] in _QUOTES and content[-1] in _QUOTES:
        content = content[1:-1].strip()
    return None if is_no_answer(content) else content


def parse_stage1(text: str, n_docs: int) -> list[ParsedSnippet]:
    """One result per document 1..n_docs; the first complete block for a document wins."""
    body = strip_thinking(text)
    if "```" in body:
        body = _FENCE.sub("", body)
    blocks = _WELL_FORMED.findall(body)
    if (
        len(blocks) == n_docs
        and all(doc == str(i) for i, (doc, _) in enumerate(blocks, 1))
        and len(_MARKER.findall(body)) == 2 * n_docs  # no other block around them, e.g. a duplicate with [brackets]
    ):
        # the common case, exactly what the prompt asks for: one pass, same result as the general parser
        return [ParsedSnippet(_clean(content), OK) for _, content in blocks]
    return _parse_general(body, n_docs)


def _parse_general(body: str, n_docs: int) -> list[ParsedSnippet]:
    found: dict[int, ParsedSnippet] = {}
    markers = list(_MARKER.finditer(body))
    for i, m in enumerate(markers):
        if m.group(1):
            continue
        doc = int(m.group(2))
        if not 1 <= doc <= n_docs:
            continue
        nxt = markers[i + 1] if i + 1 < len(markers) else None
        end = nxt.start() if nxt else len(body)
        closed = nxt is not None and nxt.group(1) == "/" and int(nxt.group(2)) == doc
        previous = found.get(doc)
        if previous is not None and previous.status == OK:
            continue
        parsed = ParsedSnippet(_clean(body[m.end() : end]), OK if closed else UNCLOSED)
        if previous is None or closed:
            found[doc] = parsed
    return [found.get(d, ParsedSnippet(None, MISSING)) for d in range(1, n_docs + 1)]


def _normalize_char(ch: str) -> str:
    if ch.isspace():
        return " "
    return unicodedata.normalize("NFKC", ch).casefold()


def _normalized_with_map(text: str) -> tuple[str, list[int]]:
    """Unicode (NFKC), case and whitespace folded text, and for each of its chars the source index."""
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        norm = _normalize_char(ch)
        if norm == " " and (not out or out[-1] == " "):
            continue
        for c in norm:
            out.append(c)
            index.append(i)
    while out and out[-1] == " ":
        out.pop()
        index.pop()
    return "".join(out), index


def normalize_text(text: str) -> str:
    return _normalized_with_map(text)[0]


def ground(snippet: str | None, passage: str, fuzzy_threshold: float = 90.0) -> Grounded:
    """Find ``snippet`` in ``passage``; grounded snippets are snapped to the passage's own text."""
    if snippet is None:
        return Grounded(None, None)
    if snippet in passage:
        return Grounded(snippet, EXACT)
    norm_passage, index = _normalized_with_map(passage)
    norm_snippet = normalize_text(snippet)
    if not norm_snippet:
        return Grounded(None, UNGROUNDED)
    at = norm_passage.find(norm_snippet)
    if at >= 0:
        start, stop = index[at], index[at + len(norm_snippet) - 1] + 1
        return Grounded(passage[start:stop], NORMALIZED)
    if fuzzy_threshold <= 100 and len(norm_snippet) >= 8:
        match = fuzz.partial_ratio_alignment(norm_snippet, norm_passage, score_cutoff=fuzzy_threshold)
        if match is not None and match.dest_end > match.dest_start:
            start, stop = index[match.dest_start], index[match.dest_end - 1] + 1
            return Grounded(passage[start:stop].strip(), FUZZY)
    return Grounded(None, UNGROUNDED)
