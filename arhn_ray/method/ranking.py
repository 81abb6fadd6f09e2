"""Stage 2 output: read ``[i] > [j] > ...`` and repair it into a full order of 1..n.

The rules: read from the last ``</think>`` onwards; ids in order; duplicates
dropped (first wins); unknown ids dropped; missing ids appended in doc order; when no id can
be read, [1] first then doc order, marked ``parse_fallback``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from arhn_ray.method.snippets import strip_thinking

_ID = re.compile(r"\[\s*(\d+)\s*\]")
_BARE_CHAIN = re.compile(r"\d+(?:\s*>\s*\d+)+")

OK, REPAIRED, PARSE_FALLBACK = "ok", "repaired", "parse_fallback"


class Ranking(NamedTuple):
    order: list[int]  # ids, best first
    status: str  # ok | repaired | parse_fallback

    def rank(self, doc_id: int) -> int:
        """1-based position of ``doc_id`` in the order."""
        return self.order.index(doc_id) + 1


def _read_ids(body: str) -> list[int]:
    ids = [int(m) for m in _ID.findall(body)]
    if ids:
        return ids
    chain = _BARE_CHAIN.search(body)
    return [int(x) for x in re.findall(r"\d+", chain.group(0))] if chain else []


def parse_ranking(text: str, n: int) -> Ranking:
    """A full order of ids 1..n from whatever the model wrote."""
    raw = _read_ids(strip_thinking(text))
    seen: set[int] = set()
    order: list[int] = []
    for i in raw:
        if 1 <= i <= n and i not in seen:
            seen.add(i)
            order.append(i)
    if not order:
        return Ranking(list(range(1, n + 1)), PARSE_FALLBACK)
    clean = len(order) == len(raw) == n
    order.extend(i for i in range(1, n + 1) if i not in seen)
    return Ranking(order, OK if clean else REPAIRED)
