"""Exact dense retrieval for evaluation: every query against every corpus passage, cosine of
normalized embeddings, the top ``k`` kept (the BEIR evaluation of a bi-encoder, without an index)."""

from __future__ import annotations

import numpy as np

from arhn_ray.evaluate.beir import BeirSet


def retrieve(model_path: str, beir: BeirSet, query_prefix: str = "", passage_prefix: str = "", k: int = 100,
             max_seq_len: int = 256, batch_size: int = 64) -> dict[str, dict[str, float]]:  # fmt: skip
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_seq_len
    doc_ids, qids = list(beir.corpus), list(beir.queries)
    encode = lambda texts: model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)  # noqa: E731
    docs = encode([passage_prefix + beir.corpus[d] for d in doc_ids])
    queries = encode([query_prefix + beir.queries[q] for q in qids])
    scores = queries @ docs.T
    k = min(k, len(doc_ids))
    run = {}
    for i, q in enumerate(qids):
        top = np.argpartition(-scores[i], k - 1)[:k]
        run[q] = {doc_ids[j]: float(scores[i, j]) for j in top}
    return run
