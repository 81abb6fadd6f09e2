"""The method's options: what decides the labels, each a config key (config.py maps the names),
with its allowed values, checked here once."""

from __future__ import annotations

from dataclasses import dataclass

from arhn_ray.method.stage1 import MODES

VARIANTS = ("rf", "relabel", "filter")
POSITIVE_NO_ANSWER = ("paper", "keep", "reject")
STAGE2_INPUTS = ("snippet", "passage")
STAGE1_CONSTRAINTS = ("none", "format", "verbatim")
STAGE1_OUTPUTS = tuple(MODES)  # the paper's copied snippet, or ids of the passage's sentences (method/stage1.py)
STAGE2_CONSTRAINTS = ("none", "format")


class OptionError(ValueError):
    """A method option out of its range; ``option`` names the field (the config maps it to its key)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclass
class LabelRules:
    """The ``method.*`` config keys that decide the labels (the config's ``method`` section is these
    and ``name``: defined here once)."""

    variant: str = "rf"  # rf (relabel and filter, the paper's final variant) | relabel | filter
    # the paper's workload: the first N negatives (the miner's order) are judged, in one Stage 1 prompt
    # with the positive; the rest are not sent and not kept (action "unjudged"). None: judge every
    # negative, in chunks of max_negatives_per_chunk
    negatives_per_query: int | None = 10
    max_negatives_per_chunk: int = 10  # negatives a Stage 1 prompt when more are judged: more chunks, one anchor
    # the anchor positive's snippet is NO_ANSWER: paper (ranked last: every negative with a snippet is
    # relabeled) | keep (the row unchanged) | reject
    positive_no_answer: str = "paper"
    max_relabeled: int | None = None  # a row with more relabels than this is rejected (null: no cap)
    paper_literal: bool = False  # Stage 2 ranks all N+1 snippets and is never skipped (for comparison)
    fuzzy_threshold: float = 90.0  # a snippet this close to a span of its passage (rapidfuzz) is grounded fuzzy
    ungrounded_as_no_answer: bool = True  # a negative's snippet not found in its passage counts as NO_ANSWER


@dataclass
class MethodOptions(LabelRules):
    """Everything that decides the labels: the rules, and how the stages ask and read (the config's
    ``stage1.*`` and ``stage2.*`` keys of the same names take their defaults from here)."""

    stage2_input: str = "snippet"
    stage1_constraint: str = "none"
    stage2_constraint: str = "none"
    stage1_output: str = "text"
    # with a teacher screen (screen.model): only the top_k negatives by teacher score go to Stage 1,
    # the rest are kept with reason "screened"; None scores every judged negative and judges them all
    # (a calibration run, read by `arhn-ray calibrate`)
    screen_top_k: int | None = None

    def __post_init__(self) -> None:
        for name, allowed in (
            ("stage1_output", STAGE1_OUTPUTS),
            ("variant", VARIANTS),
            ("positive_no_answer", POSITIVE_NO_ANSWER),
            ("stage2_input", STAGE2_INPUTS),
            ("stage1_constraint", STAGE1_CONSTRAINTS),
            ("stage2_constraint", STAGE2_CONSTRAINTS),
        ):
            if getattr(self, name) not in allowed:
                raise OptionError(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.max_negatives_per_chunk < 1:
            raise OptionError("max_negatives_per_chunk", "must be at least 1")
        if self.negatives_per_query is not None and self.negatives_per_query < 1:
            raise OptionError("negatives_per_query", "must be at least 1 (null judges every negative)")
        if self.screen_top_k is not None and self.screen_top_k < 1:
            raise OptionError("screen_top_k", "must be at least 1 (null judges every negative and records its score)")
        if self.max_relabeled is not None and self.max_relabeled < 0:
            raise OptionError("max_relabeled", "must be at least 0")
