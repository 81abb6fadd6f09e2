"""What every reader of a passage reads: the LLM in both stages, the retriever, the teacher."""

from __future__ import annotations


def passage_text(passage: dict) -> str:
    """Title (if any), then text: the string a retriever is trained on, so the LLM judges the same one.

    Wikipedia passages (NQ, HotpotQA, FEVER) often name their subject only in the title
    ("He was born in 1961..."); without it Stage 1 cannot tell that the passage answers.
    """
    title = (passage.get("title") or "").strip()
    return f"{title} {passage['text']}" if title else passage["text"]
