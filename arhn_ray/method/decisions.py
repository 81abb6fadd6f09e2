"""The typed records a refined row carries, as the method builds them: a ``Decision`` per input
negative and an ``LlmCall`` per Stage 1 chunk. Plain dataclasses (``method/`` stays pure); the Arrow
schema of the output is derived from them (data/records.py), so the two cannot drift.

The rules a reader may rely on, stated once here:

- ``decisions`` holds one entry per input negative, **in input order**;
- ``positive_passages`` is the input's positives, then the relabeled negatives in input order;
- ``negative_passages`` is the kept negatives (input order for ARHN, best-scored first for
  TopK-PercPos); ``removed_passages`` is every other input negative (filtered, duplicates, past N),
  in input order, so ``records.original_row`` gives the input row back.

Example:
    >>> Decision("d1", "keep", "no_answer").to_dict()["action"]
    'keep'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Decision:
    """What happened to one input negative, and why."""

    docid: str
    action: str  # relabel | filter | keep | unjudged
    reason: str  # ranked_above_positive, answer_below_positive, no_answer, screened, duplicate_of_positive, ...
    snippet: str | None = None  # its Stage 1 answer snippet; None for NO_ANSWER
    grounding: str | None = None  # exact | normalized | fuzzy | ungrounded (how the snippet was found in its passage)
    rank: int | None = field(default=None, metadata={"arrow": "int32"})  # its Stage 2 position, [1] being the anchor
    score: float | None = None  # a teacher's score (the screen's, or TopK-PercPos'), None without one

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LlmCall:
    """One chunk's LLM calls: Stage 1 always, Stage 2 when the chunk needed a ranking."""

    chunk: int = field(metadata={"arrow": "int32"})
    stage1_text: str | None = None
    stage1_prompt_tokens: int | None = None
    stage1_output_tokens: int | None = None
    stage1_finish_reason: str | None = None
    stage2_text: str | None = None  # None: no Stage 2 call (no negative of the chunk had a snippet)
    stage2_prompt_tokens: int | None = None
    stage2_output_tokens: int | None = None
    stage2_finish_reason: str | None = None
    stage2_status: str | None = None  # how the ranking parsed (ok, repaired, parse_fallback, ...)

    def to_dict(self) -> dict:
        return asdict(self)
