"""Stage 1, Stage 2 and PRHN prompts, built from versioned template files.

The templates are data (``arhn_ray/prompts/<version>/*.txt``): ``paper-v1`` is Figure 3 of the
paper word for word; ``paper-v2`` (the default) tells the model a document is its title then its
text, and puts Stage 1's fixed rules before anything that varies (n, the question, the documents),
so that an engine's prefix cache serves the rules to every call; ``ids-v1``/``ids-v2`` are their
sentence-ids twins. A config can point ``prompts.dir`` at another folder. Every passage and
snippet is neutralised before it enters a prompt so that no document can forge a block
marker, a ranking id or the NO_ANSWER token.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VERSION = "paper-v2"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "prompts"
TEMPLATE_FILES = ("stage1.txt", "stage1_document.txt", "stage2.txt", "stage2_item.txt", "prhn.txt")
NO_ANSWER = "NO_ANSWER"

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_MARKER_LIKE = re.compile(r"\[+\s*/?\s*doc\s*\d+\s*\]+", re.IGNORECASE)
_TRIPLE_OPEN = re.compile(r"\[{3,}")
_TRIPLE_CLOSE = re.compile(r"\]{3,}")
_RANK_ID = re.compile(r"\[(\s*\d+\s*)\]")
_NO_ANSWER_TOKEN = re.compile(r"no_answer", re.IGNORECASE)
_THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)


def neutralize(text: str) -> str:
    """Rewrite anything a parser could read as structure (as rank_llm turns ``[n]`` into ``(n)``).

    Every rewrite keeps the length, so a span found in the neutralised text is the same span
    of the original passage.
    """
    if "[" not in text and "]" not in text and "<" not in text and "_" not in text:
        return text
    text = _MARKER_LIKE.sub(lambda m: m.group(0).replace("[", "(").replace("]", ")"), text)
    text = _TRIPLE_OPEN.sub(lambda m: "(" * len(m.group(0)), text)
    text = _TRIPLE_CLOSE.sub(lambda m: ")" * len(m.group(0)), text)
    text = _RANK_ID.sub(r"(\1)", text)
    text = _THINK_TAG.sub(lambda m: m.group(0).replace("<", "(").replace(">", ")"), text)
    return _NO_ANSWER_TOKEN.sub(lambda m: m.group(0).replace("_", " "), text)


def fill(template: str, **values: object) -> str:
    """Single-pass substitution: a value that contains ``{x}`` is never expanded again."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


@dataclass(frozen=True)
class PromptSet:
    """One version of the prompts, with a hash that goes into every output row's provenance."""

    version: str
    stage1: str
    stage1_document: str
    stage2: str
    stage2_item: str
    prhn: str
    sha256: str

    @classmethod
    def load(cls, version: str = DEFAULT_VERSION, directory: str | Path | None = None) -> PromptSet:
        folder = Path(directory) if directory else BUILTIN_DIR / version
        if not folder.is_dir():
            raise FileNotFoundError(f"prompt version {version!r}: no folder {folder}")
        texts = {}
        digest = hashlib.sha256()
        for name in TEMPLATE_FILES:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"prompt version {version!r}: missing {path}")
            texts[name[:-4]] = path.read_text(encoding="utf-8").rstrip("\n")
            digest.update(name.encode() + b"\0" + texts[name[:-4]].encode() + b"\0")
        return cls(version=version, sha256=digest.hexdigest()[:16], **texts)

    def stage1_prompt(self, question: str, passages: list[str]) -> str:
        """Stage 1: doc1 is the anchor positive, doc2.. the chunk's negatives (already truncated)."""
        documents = "\n\n".join(fill(self.stage1_document, index=i, text=neutralize(text)) for i, text in enumerate(passages, 1))
        return fill(self.stage1, n=len(passages), question=neutralize(question), documents=documents)

    def stage2_prompt(self, question: str, items: list[str | None], passages: bool = False) -> str:
        """Stage 2: items[0] is [1], the anchor; None is NO_ANSWER; PRHN (``passages=True``) ranks passages."""
        body = "\n".join(
            fill(self.stage2_item, index=i, text=NO_ANSWER if t is None else _one_line(neutralize(t)))
            for i, t in enumerate(items, 1)
        )
        template = self.prhn if passages else self.stage2
        return fill(template, question=neutralize(question), items=body)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def chat(prompt: str) -> list[dict[str, str]]:
    """The chat messages sent to an engine: one user turn."""
    return [{"role": "user", "content": prompt}]
