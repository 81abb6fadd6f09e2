"""evaluate's retrieval at two corpus sizes side by side: memory stays a block, not the corpus.

Builds two synthetic BEIR sets (N and 10 x N passages of ~25 words from a fixed vocabulary, 200
queries each judged against one planted passage), runs evaluate's own path on each in a fresh
process (a Ray Data pool of one CPU encoder writing embeddings beside the output, then FAISS over
blocks of ``--block`` passages), and prints for each: time to encode, time to search, the
driver's peak RSS (ru_maxrss of its process: the encoder runs in a Ray actor, whose own peak is
printed too), and nDCG@10; on the smaller one also nDCG@10 from an exact search over the whole
matrix in memory, which the streamed search must equal.

    python jobs/benchmarks/retrieval.py [--passages 20000] [--block 8192]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = [f"w{i}" for i in range(3000)]


def make_set(folder: Path, passages: int, queries: int = 200, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    (folder / "qrels").mkdir()
    with open(folder / "corpus.jsonl", "w") as f:
        for i in range(passages):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(WORDS, k=25))}) + "\n")
    planted = rng.sample(range(passages), queries)
    with open(folder / "queries.jsonl", "w") as q, open(folder / "qrels" / "test.tsv", "w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        texts = {}
        with open(folder / "corpus.jsonl") as c:
            wanted = set(planted)
            for i, line in enumerate(c):
                if i in wanted:
                    texts[i] = json.loads(line)["text"]
        for n, i in enumerate(planted):
            words = texts[i].split()
            q.write(json.dumps({"_id": f"q{n}", "text": " ".join(rng.sample(words, 8))}) + "\n")
            r.write(f"q{n}\td{i}\t1\n")


def one(folder: str, block: int, exact: bool) -> None:
    """Runs in its own process: evaluate's retrieval on one set; prints a JSON line."""
    import resource
    import time

    import numpy as np
    import ray

    from arhn_ray.bundled import minilm_path
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.evaluate.beir import load_beir, read_corpus
    from arhn_ray.evaluate.retrieve import encode_corpus, encode_queries, search
    from arhn_ray.evaluate.scoring import mean, per_query

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    beir = load_beir(folder)
    ev = EvaluateConfig(max_seq_len=64, search_block=block)
    out = OutputLayout(str(Path(folder).parent / f"out-{beir.name}"))
    fs, target, model = out.arrow_filesystem(), out.file("evaluate/embeddings/x"), minilm_path()
    t = time.perf_counter()
    encode_corpus(beir.corpus_path, {"m": model}, ev, 1, target, fs)
    qids, queries = encode_queries(beir.queries, {"m": model}, ev, 1)["m"]
    encoded = time.perf_counter() - t
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    t = time.perf_counter()
    run = search(target, fs, "m", qids, queries, 100, beir.corpus_size, block)
    searched = time.perf_counter() - t
    result = {"passages": beir.corpus_size, "encode_s": round(encoded, 1), "search_s": round(searched, 2),
              "driver_peak_mb_before_search": round(before), "driver_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10),
              "ndcg@10": round(mean(per_query(run, beir.qrels), "ndcg@10"), 4)}  # fmt: skip
    if exact:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model, device="cpu")
        st.max_seq_length = 64
        ids, texts = zip(*read_corpus(beir))
        docs = st.encode(list(texts), normalize_embeddings=True, batch_size=256)
        scores = st.encode(list(beir.queries.values()), normalize_embeddings=True) @ docs.T
        exact_run = {q: {ids[j]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]} for i, q in enumerate(beir.queries)}
        result["exact_ndcg@10"] = round(mean(per_query(exact_run, beir.qrels), "ndcg@10"), 4)
    ray.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=20_000)
    ap.add_argument("--block", type=int, default=8192)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one, args.block, args.exact)
    tmp = Path(tempfile.mkdtemp(prefix="arhn-bench-retrieval-"))
    results = []
    for n, exact in ((args.passages, True), (10 * args.passages, False)):
        folder = tmp / f"set{n}"
        make_set(folder, n)
        print(f"{n:,} passages: running", flush=True)
        done = subprocess.run([sys.executable, __file__, "--one", str(folder), "--block", str(args.block), *(["--exact"] if exact else [])],
                              capture_output=True, text=True, check=True)  # fmt: skip
        results.append(json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:]))
        print(json.dumps(results[-1]), flush=True)
    small, big = results
    print(f"\n{'passages':>10} {'encode s':>9} {'search s':>9} {'driver peak MB':>15} {'nDCG@10':>8}")
    for r in results:
        print(f"{r['passages']:>10,} {r['encode_s']:>9} {r['search_s']:>9} {r['driver_peak_mb']:>15} {r['ndcg@10']:>8}")
    print(f"10x the corpus: driver peak memory x{big['driver_peak_mb'] / small['driver_peak_mb']:.2f} (goal <= 1.3), "
          f"search time x{big['search_s'] / small['search_s']:.1f}, encode time x{big['encode_s'] / small['encode_s']:.1f}; "
          f"streamed nDCG@10 {small['ndcg@10']} vs exact {small['exact_ndcg@10']} on {small['passages']:,} passages")  # fmt: skip


if __name__ == "__main__":
    main()
