"""Relabel, filter or keep every hard negative of a query (the paper's Eq. 8-10, made exact).

A row is planned into chunks (the anchor positive plus at most N negatives each, duplicates of
a positive taken out first); each passage is read as the retriever reads it (title, then text);
each chunk's Stage 1 snippets decide what Stage 2 sees; each chunk's ranking decides the labels.
A row has one anchor snippet, chunk 0's, ranked as [1] in every chunk's Stage 2; an anchor snippet
that is not found in its passage is still ranked (the paper ranks what the model wrote), and the
row says it was ungrounded.

The variants, per negative (``duplicate_of_positive`` is filtered in all three: a negative that
is the positive's own text is no negative and would be a second copy as a positive):

======================  ==========  ==========  ==========
Stage 2 said            ``rf``      ``relabel``  ``filter``
======================  ==========  ==========  ==========
ranked above [1]        relabel     relabel     keep
ranked below [1]        filter      keep        filter
NO_ANSWER (Stage 1)     keep        keep        keep
======================  ==========  ==========  ==========

``filter`` and ``relabel`` apply one of the paper's two rules each (its ARHN(Filter) and
ARHN(Relabel)); the other side stays a negative. All functions here are pure.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from arhn_ray.method import ranking as rk
from arhn_ray.method.constraints import stage2_format
from arhn_ray.method.decisions import Decision
from arhn_ray.method.options import MethodOptions
from arhn_ray.method.passages import passage_text
from arhn_ray.method.prompts import PromptSet
from arhn_ray.method.snippets import UNGROUNDED
from arhn_ray.method.stage1 import MODES, Stage1Read

RELABEL, FILTER, KEEP = "relabel", "filter", "keep"
UNJUDGED = "unjudged"  # past method.negatives_per_query: not sent to the LLM, so not kept either
PAST_N, SCREENED = "past_negatives_per_query", "screened"
NOT_JUDGED = ("duplicate_of_positive", PAST_N, SCREENED)  # reasons of decisions no LLM made

_WORDS = re.compile(r"\w+")
_FIRST_WORD = re.compile(r"[^\W_]+")


def duplicate_key(text: str) -> str:
    """Text compared for ``duplicate_of_positive``: NFKC, case-folded words only."""
    return " ".join(_WORDS.findall(unicodedata.normalize("NFKC", text).casefold()))


def _head(text: str) -> str:
    """The first word of ``duplicate_key`` (or its first 16 characters): cheap enough to rule most passages out."""
    m = _FIRST_WORD.search(unicodedata.normalize("NFKC", text.lstrip()[:80]))
    return m.group(0).casefold()[:16] if m else ""


@dataclass
class RowPlan:
    """A row cut into chunks. Passage texts are what the LLM sees: title and text, truncated as the retriever truncates."""

    row: dict
    anchor_text: str
    negative_texts: list[str]
    duplicates: list[int]
    chunks: list[list[int]]  # indices into row["negative_passages"]
    unjudged: list[int] = field(default_factory=list)  # past negatives_per_query: no call, not kept
    screened: list[int] = field(default_factory=list)  # below the screen's top k: no call, kept
    scores: dict[int, float] = field(default_factory=dict)  # the screen's teacher score of each judged negative

    @property
    def judged(self) -> list[int]:
        """The negatives the LLM would judge without a screen (the first N that are not duplicates)."""
        return sorted([i for c in self.chunks for i in c] + self.screened)


def plan_row(
    row: dict, options: MethodOptions, truncate: Callable[[str], str] | None = None, scores: list[float] | None = None
) -> RowPlan:
    """The row's chunks: duplicates of a positive out first, then the first ``negatives_per_query``
    negatives judged (the rest ``unjudged``), cut into chunks of ``max_negatives_per_chunk``.
    ``scores`` (the screen's teacher scores of ``judged``, in order) keep all but the
    ``screen_top_k`` best-scored out of Stage 1 (``screened``).

    Example:
        >>> plan = plan_row(row, MethodOptions(negatives_per_query=10))  # a row of 25 negatives
        >>> [len(c) for c in plan.chunks], len(plan.unjudged)
        ([10], 15)
    """
    cut = truncate or (lambda t: t)
    positives = row["positive_passages"]
    negatives = row["negative_passages"]
    heads = {_head(p["text"]) for p in positives}
    positive_keys: set[str] | None = None
    duplicates, rest = [], []
    for i, neg in enumerate(negatives):
        text = neg["text"]
        if _head(text) in heads:
            if positive_keys is None:
                positive_keys = {duplicate_key(p["text"]) for p in positives}
            if duplicate_key(text) in positive_keys:
                duplicates.append(i)
                continue
        rest.append(i)
    unjudged: list[int] = []
    if options.negatives_per_query is not None:
        rest, unjudged = rest[: options.negatives_per_query], rest[options.negatives_per_query :]
    plan = RowPlan(
        row=row,
        anchor_text=cut(passage_text(positives[0])),
        negative_texts=[cut(passage_text(neg)) for neg in negatives],
        duplicates=duplicates,
        chunks=_chunks(rest, options.max_negatives_per_chunk),
        unjudged=unjudged,
    )
    return plan if scores is None else screen_plan(plan, scores, options)


def _chunks(members: list[int], n: int) -> list[list[int]]:
    return [members[i : i + n] for i in range(0, len(members), n)]


def screen_plan(plan: RowPlan, scores: list[float], options: MethodOptions) -> RowPlan:
    """The plan behind a teacher screen: ``scores`` are the teacher's, one per ``plan.judged``
    negative in order; only the ``screen_top_k`` best (ties: the miner's order) stay in the chunks,
    the others are ``screened``. ``screen_top_k=None`` keeps them all and only records the scores.

    Example:
        >>> screen_plan(plan, [0.1, 0.9, 0.5], MethodOptions(screen_top_k=2)).chunks
        [[1, 2]]
    """
    judged = plan.judged
    if len(scores) != len(judged):
        raise ValueError(f"{len(scores)} screen scores for {len(judged)} judged negatives")
    by_score = dict(zip(judged, (float(s) for s in scores)))
    keep = judged
    if options.screen_top_k is not None:
        keep = sorted(sorted(judged, key=lambda i: (-by_score[i], i))[: options.screen_top_k])
    chosen = set(keep)
    return replace(
        plan,
        chunks=_chunks(keep, options.max_negatives_per_chunk),
        screened=[i for i in judged if i not in chosen],
        scores=by_score,
    )


def chunk_passages(plan: RowPlan, chunk: int) -> list[str]:
    """doc1 = anchor, doc2.. = the chunk's negatives."""
    return [plan.anchor_text] + [plan.negative_texts[i] for i in plan.chunks[chunk]]


def stage1_request(plan: RowPlan, chunk: int, prompts: PromptSet, options: MethodOptions) -> tuple[str, str | None]:
    """The Stage 1 prompt and its decoding constraint (a regex or None), as the output mode asks."""
    return MODES[options.stage1_output].request(
        plan.row["query"], chunk_passages(plan, chunk), prompts, options.stage1_constraint
    )


@dataclass
class ChunkSnippets(Stage1Read):
    """Stage 1 result of one chunk: position 0 is the anchor, then the chunk's negatives."""

    def snippet(self, pos: int, options: MethodOptions) -> str | None:
        """A negative's snippet; an ungrounded one is NO_ANSWER unless ``ungrounded_as_no_answer`` is off."""
        g = self.grounded[pos]
        if (
            g.grounding == UNGROUNDED
            and not options.ungrounded_as_no_answer
            and MODES[options.stage1_output].keeps_ungrounded_text
        ):
            return self.parsed[pos].text
        return g.snippet

    def anchor(self, options: MethodOptions) -> Anchor:
        """The anchor's snippet as Stage 2 ranks it: an ungrounded copy is ranked as the model wrote it
        (the paper has no grounding step), whatever ``ungrounded_as_no_answer`` says for negatives."""
        g = self.grounded[0]
        if g.grounding == UNGROUNDED and MODES[options.stage1_output].keeps_ungrounded_text:
            return Anchor(self.parsed[0].text, UNGROUNDED)
        return Anchor(g.snippet, g.grounding)  # sentence ids: an id that points nowhere has no text to rank


@dataclass(frozen=True)
class Anchor:
    """The row's one anchor snippet (chunk 0's): None is NO_ANSWER; grounding as for negatives."""

    snippet: str | None
    grounding: str | None


def read_stage1(plan: RowPlan, chunk: int, text: str, options: MethodOptions) -> ChunkSnippets:
    read = MODES[options.stage1_output].read(text, chunk_passages(plan, chunk), options.fuzzy_threshold)
    return ChunkSnippets(read.parsed, read.grounded)


@dataclass
class Stage2Request:
    prompt: str
    constraint: str | None
    positions: list[int]  # chunk positions (0 = anchor) in the order of items [1], [2], ...


def row_anchor(snippets: list[ChunkSnippets], options: MethodOptions) -> Anchor:
    """The row's one anchor snippet: chunk 0's, ranked as [1] in every chunk's Stage 2."""
    return snippets[0].anchor(options) if snippets else Anchor(None, None)


def stage2_request(
    plan: RowPlan, chunk: int, snippets: ChunkSnippets, prompts: PromptSet, options: MethodOptions, anchor: Anchor
) -> Stage2Request | None:
    """None when Stage 2 cannot change a label (no negative has a snippet, or the anchor has none);
    ``paper_literal`` always ranks all N+1. ``anchor`` is the row's (``row_anchor``)."""
    size = len(plan.chunks[chunk]) + 1
    with_snippet = [p for p in range(1, size) if snippets.snippet(p, options) is not None]
    if options.paper_literal:
        positions = list(range(size))
    else:
        if not with_snippet or anchor.snippet is None:
            return None
        positions = [0, *with_snippet]
    if options.stage2_input == "passage":
        passages = chunk_passages(plan, chunk)
        items: list[str | None] = [passages[p] for p in positions]
    else:
        items = [anchor.snippet if p == 0 else snippets.snippet(p, options) for p in positions]
    prompt = prompts.stage2_prompt(plan.row["query"], items, passages=options.stage2_input == "passage")
    constraint = stage2_format(len(items)) if options.stage2_constraint == "format" else None
    return Stage2Request(prompt, constraint, positions)


@dataclass
class RowLabels:
    positive_passages: list[dict]
    negative_passages: list[dict]
    removed_passages: list[dict]  # the input negatives neither kept nor relabeled, in input order
    decisions: list[dict]
    positive_snippet: str | None
    positive_grounding: str | None = None
    rejected: str | None = None
    stage2_status: list[str | None] = field(default_factory=list)


def label_row(
    plan: RowPlan,
    snippets: list[ChunkSnippets],
    stage2: list[tuple[Stage2Request, rk.Ranking] | None],
    options: MethodOptions,
) -> RowLabels:
    """One decision per input negative; the refined lists partition the input passages."""
    row = plan.row
    negatives = row["negative_passages"]
    decisions: list[dict | None] = [None] * len(negatives)
    for i in plan.duplicates:
        decisions[i] = _decision(negatives[i], FILTER, "duplicate_of_positive", None, None, None)
    for i in plan.unjudged:
        decisions[i] = _decision(negatives[i], UNJUDGED, PAST_N, None, None, None)
    for i in plan.screened:
        decisions[i] = _decision(negatives[i], KEEP, SCREENED, None, None, None, plan.scores[i])
    rejected = None
    anchor = row_anchor(snippets, options)
    if plan.chunks and anchor.snippet is None and options.positive_no_answer == "reject":
        rejected = "positive_no_answer"
    for c, members in enumerate(plan.chunks):
        cs = snippets[c]
        ranked = stage2[c]
        ranks = {}
        if ranked is not None:
            request, ranking = ranked
            ranks = {request.positions[item - 1]: ranking.rank(item) for item in ranking.order}
        # paper_literal ranked a NO_ANSWER anchor too: its ranking decides, as in the paper
        anchor_unranked = anchor.snippet is None and not (options.paper_literal and ranked is not None)
        for pos, i in enumerate(members, 1):
            snippet = cs.snippet(pos, options)
            grounding = cs.grounded[pos].grounding
            rank = ranks.get(pos)
            if snippet is None:
                reason = "ungrounded" if grounding == UNGROUNDED else "no_answer"
                action = KEEP
            elif anchor_unranked:
                reason = "positive_no_answer"
                action = RELABEL if options.positive_no_answer == "paper" else KEEP
            elif ranked is None or ranked[1].status == rk.PARSE_FALLBACK:
                reason, action = "parse_fallback", FILTER
            elif rank < ranks[0]:
                reason, action = "ranked_above_positive", RELABEL
            else:
                reason, action = "answer_below_positive", FILTER
            if (action == RELABEL and options.variant == "filter") or (action == FILTER and options.variant == "relabel"):
                action = KEEP
            decisions[i] = _decision(negatives[i], action, reason, snippet, grounding, rank, plan.scores.get(i))
    relabeled = [neg for neg, d in zip(negatives, decisions) if d["action"] == RELABEL]
    if options.max_relabeled is not None and len(relabeled) > options.max_relabeled:
        rejected = rejected or f"max_relabeled: {len(relabeled)} > {options.max_relabeled}"
    return RowLabels(
        positive_passages=list(row["positive_passages"]) + relabeled,
        negative_passages=[neg for neg, d in zip(negatives, decisions) if d["action"] == KEEP],
        removed_passages=[neg for neg, d in zip(negatives, decisions) if d["action"] not in (KEEP, RELABEL)],
        decisions=decisions,  # type: ignore[arg-type]
        positive_snippet=anchor.snippet,
        positive_grounding=anchor.grounding,
        rejected=rejected,
        stage2_status=[r[1].status if r else None for r in stage2],
    )


def _decision(
    passage: dict, action: str, reason: str, snippet: str | None, grounding: str | None, rank: int | None,
    score: float | None = None,
) -> dict:  # fmt: skip
    return Decision(passage["docid"], action, reason, snippet, grounding, rank, score).to_dict()
