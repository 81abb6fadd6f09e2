"""Stage 1's two output modes, each one object that holds its request and its reading, as
rank_llm keeps a prompt template with its parser:

- ``text`` (the paper): the model copies each snippet; the copy is grounded in its passage
  (exact, normalized, fuzzy or ungrounded), optionally under a format or verbatim constraint;
- ``sentence_ids``: the passages go in as numbered sentences and the model answers ids; the
  snippet is cut from the passage, exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from arhn_ray.method.constraints import stage1_format, stage1_verbatim
from arhn_ray.method.prompts import PromptSet, neutralize
from arhn_ray.method.sentence_ids import ground_ids, ids_constraint, numbered, parse_answers
from arhn_ray.method.snippets import Grounded, ParsedSnippet, ground, parse_stage1


@dataclass
class Stage1Read:
    """One chunk's Stage 1 answer, read: position 0 is the anchor, then the chunk's negatives."""

    parsed: list[ParsedSnippet]
    grounded: list[Grounded]


class CopiedText:
    name = "text"
    # a copy found nowhere in its passage can still be kept as the model wrote it (method.ungrounded_as_no_answer=false)
    keeps_ungrounded_text = True

    def request(self, query: str, passages: list[str], prompts: PromptSet, constraint: str) -> tuple[str, str | None]:
        prompt = prompts.stage1_prompt(query, passages)
        if constraint == "verbatim":
            return prompt, stage1_verbatim([neutralize(p) for p in passages])
        if constraint == "format":
            return prompt, stage1_format(len(passages))
        return prompt, None

    def read(self, text: str, passages: list[str], fuzzy_threshold: float) -> Stage1Read:
        parsed = parse_stage1(text, len(passages))
        grounded = []
        for p, passage in zip(parsed, passages):
            neutral = neutralize(passage)
            g = ground(p.text, neutral, fuzzy_threshold)
            if g.snippet is not None and neutral is not passage:
                g = Grounded(_same_span(g.snippet, neutral, passage), g.grounding)
            grounded.append(g)
        return Stage1Read(parsed, grounded)


class SentenceIds:
    name = "sentence_ids"
    keeps_ungrounded_text = False  # an id that points nowhere has no text to keep

    def request(self, query: str, passages: list[str], prompts: PromptSet, constraint: str) -> tuple[str, str | None]:
        neutral = [neutralize(p) for p in passages]
        prompt = prompts.stage1_prompt(query, [numbered(p) for p in neutral])
        return prompt, None if constraint == "none" else ids_constraint(neutral)

    def read(self, text: str, passages: list[str], fuzzy_threshold: float) -> Stage1Read:
        parsed = parse_answers(text, len(passages))
        return Stage1Read(parsed, [ground_ids(p.text, passage, neutralize(passage)) for p, passage in zip(parsed, passages)])


def _same_span(span: str, neutral: str, original: str) -> str:
    """neutralize() keeps lengths, so the model's span is cut from the passage itself."""
    at = neutral.find(span)
    return original[at : at + len(span)] if at >= 0 else span


MODES = {mode.name: mode for mode in (CopiedText(), SentenceIds())}
