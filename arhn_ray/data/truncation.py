"""Cut each passage to what the retriever sees: ``max_seq_len`` tokens of its own tokenizer.

The cut is made at a character offset of the original text (from the tokenizer's offset
mapping), so the truncated passage is a prefix of the passage and snippets stay verbatim.
"""

from __future__ import annotations

from functools import lru_cache

from arhn_ray import bundled


class Truncator:
    def __init__(self, tokenizer: str, max_seq_len: int = 512, local_files_only: bool = False):
        from transformers import AutoTokenizer

        self.name, self.max_seq_len, self.local_files_only = tokenizer, max_seq_len, local_files_only
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=local_files_only)
        self.budget = max_seq_len - self.tokenizer.num_special_tokens_to_add(pair=False)
        if self.budget < 1:
            raise ValueError(f"truncation.max_seq_len={max_seq_len} leaves no room for text")
        self._cached = lru_cache(maxsize=65536)(self._cut)

    def _cut(self, text: str) -> str:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= self.budget:
            return text
        return text[: offsets[self.budget - 1][1]]

    def __call__(self, text: str) -> str:
        return self._cached(text)

    def __reduce__(self):
        """Sent to Ray workers by name, not with its cache."""
        return (Truncator, (self.name, self.max_seq_len, self.local_files_only))


def make_truncator(tokenizer: str | None, max_seq_len: int, local_files_only: bool = False) -> Truncator | None:
    """The config's truncation (``truncation.tokenizer``, ``truncation.max_seq_len``); None: passages stay whole.
    ``local_files_only``: from this machine's cache only, never the hub."""
    return Truncator(bundled.resolve(tokenizer), max_seq_len, local_files_only) if tokenizer else None
