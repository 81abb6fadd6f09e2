"""`arhn-ray evaluate`: a BEIR folder read strictly, nDCG@10 against an independent computation,
and the whole loop (baseline, three trained arms, zero-shot) on the shipped evaluation set."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import ROOT, SAMPLES, load_jsonl, run_in_terminal, terminal_lines

from arhn_ray.evaluate.beir import BeirError, load_beir

EVAL = ROOT / "arhn_ray" / "evaluate" / "msmarco_beir"


def test_the_shipped_eval_set_is_read_and_holds_no_training_query():
    beir = load_beir(EVAL)
    assert (len(beir.queries), beir.corpus_size, beir.name) == (13, 650, "msmarco_beir")
    assert not set(beir.queries) & {r["query_id"] for r in load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "queries.jsonl").unlink(), "queries.jsonl: missing"),
        (lambda d: (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "q\tnope\t1\n"), "test.tsv: line 2: query-id 'q'"),
        (lambda d: (d / "qrels" / "test.tsv").open("a").write(f"{load_beir(EVAL).queries.popitem()[0]}\tno-such-doc\t1\n"),
         "test.tsv: line 15: corpus-id 'no-such-doc' is not in corpus.jsonl"),
        (lambda d: (d / "corpus.jsonl").open("a").write("{not json\n"), "corpus.jsonl: line 651: invalid JSON"),
    ],
)  # fmt: skip
def test_a_malformed_eval_folder_fails_naming_the_file_and_the_line(tmp_path, damage, message):
    folder = tmp_path / "eval"
    shutil.copytree(EVAL, folder)
    damage(folder)
    with pytest.raises(BeirError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_beir(folder)


@pytest.mark.ray
def test_streamed_block_search_equals_exact_search_and_ndcg_by_hand(ray_cluster, tmp_path, monkeypatch):
    """The retrieval path (a Ray Data encoder pool writing embeddings to the output, FAISS over
    blocks of 128 passages, across the files' boundaries) against an exact search by hand over the
    whole matrix, on the shipped corpus grown with copies of the sample's passages (962); and
    zero-shot nDCG@10 by hand: binary judgments, so a query's nDCG@10 is 1/log2(1 + rank)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from arhn_ray.bundled import minilm_path
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.evaluate.beir import read_corpus
    from arhn_ray.evaluate.retrieve import encode_corpus, encode_queries, search
    from arhn_ray.evaluate.scoring import mean, per_query

    folder = tmp_path / "grown"
    shutil.copytree(EVAL, folder)
    extra = {
        p["docid"]: p for r in load_jsonl(SAMPLES / "rlhn_msmarco.jsonl") for p in r["positive_passages"] + r["negative_passages"]
    }
    with open(folder / "corpus.jsonl", "a") as f:
        f.writelines(
            json.dumps({"_id": f"x{d}", "title": p.get("title", ""), "text": p["text"] + " (a copy)"}) + "\n"
            for d, p in extra.items()
        )
    beir = load_beir(folder)
    assert beir.corpus_size > 900
    model = minilm_path()
    ev = EvaluateConfig(encode_batch_size=200)
    out = OutputLayout(str(tmp_path / "out"))
    target = out.file("evaluate/embeddings/grown")
    monkeypatch.setattr("arhn_ray.evaluate.retrieve.EMBEDDING_FILE_ROWS", 300)  # files of 300+ rows: blocks cross them
    encode_corpus(beir.corpus_path, {"zero_shot": model}, ev, 2, target, out.arrow_filesystem())
    assert len(list(Path(target).glob("*.parquet"))) > 1
    qids, queries = encode_queries(beir.queries, {"zero_shot": model}, ev, 1)["zero_shot"]
    run = search(target, out.arrow_filesystem(), "zero_shot", qids, queries, 100, beir.corpus_size, block_rows=128)

    st = SentenceTransformer(model, device="cpu")
    st.max_seq_length = ev.max_seq_len
    ids, texts = zip(*read_corpus(beir))
    docs = st.encode(list(texts), normalize_embeddings=True)
    by_hand = []
    for q, text in beir.queries.items():
        scores = docs @ st.encode([text], normalize_embeddings=True)[0]
        order = np.argsort(-scores)[:100]
        assert [ids[j] for j in order[:10]] == sorted(run[q], key=run[q].get, reverse=True)[:10]
        # the same top 100 (by score: two copies of one text tie, and either may come 100th)
        assert sorted(run[q].values(), reverse=True) == pytest.approx([float(scores[j]) for j in order], abs=1e-4)
        relevant = [i for i, j in enumerate(order[:10], 1) if beir.qrels[q].get(ids[j], 0) > 0]
        by_hand.append(1 / math.log2(1 + relevant[0]) if relevant else 0.0)
    ours = mean(per_query(run, beir.qrels), "ndcg@10")
    assert ours == pytest.approx(float(np.mean(by_hand)), abs=1e-4) and 0.0 < ours < 1.0


@pytest.mark.ray
def test_embedding_files_hold_a_hundred_thousand_rows_whatever_the_block_size(ray_cluster, tmp_path):
    """Issue 34: a run's 1 MiB blocks made a file a block (~85 passages of four 768-d arms). Written
    under that block size, 120,000 rows of a 384-d embedding come out as at most two files."""
    import numpy as np
    import ray.data

    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.evaluate.retrieve import write_embeddings

    ctx = ray.data.DataContext.get_current()
    saved, ctx.target_max_block_size = ctx.target_max_block_size, 1 << 20
    try:
        ds = ray.data.range(120_000, override_num_blocks=24).map_batches(
            lambda b: {"_id": b["id"].astype(str), "zero_shot": np.ones((len(b["id"]), 384), np.float32)}, batch_size=5000
        )
        out = OutputLayout(str(tmp_path))
        write_embeddings(ds, out.file("emb"), out.arrow_filesystem())
    finally:
        ctx.target_max_block_size = saved
    files = sorted(Path(out.file("emb")).glob("*.parquet"))
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    assert sum(rows) == 120_000 and len(files) <= 2 and min(rows[:-1] or [100_000]) >= 100_000, rows


GIB = 2.0**30


@pytest.mark.parametrize(
    ("workers", "use_gpu", "memory_gb", "cluster", "asked", "expected"),
    [
        (8, True, None, {"GPU": 16.0, "CPU": 64.0}, 0, 2),  # the A100 config: two 8-GPU arms at once, the third after
        (8, True, None, {"GPU": 24.0}, 0, 3),
        (8, True, None, {"GPU": 4.0}, 0, 1),  # fewer GPUs than one arm asks: one at a time (Ray waits for room)
        (1, False, None, {"CPU": 2.0, "GPU": 16.0}, 0, 2),  # on CPU the CPUs count, not declared GPUs
        (1, False, None, {"CPU": 24.0}, 0, 3),  # never more than the arms
        (1, False, 10.0, {"CPU": 24.0, "memory": 17 * GIB}, 0, 1),  # this machine: memory holds one 10 GiB worker
        (1, False, 10.0, {"CPU": 24.0, "memory": 45 * GIB}, 0, 3),
        (1, False, None, {"CPU": 24.0}, 1, 1),  # evaluate.arms_at_once=1: one after another
    ],
)
def test_arms_train_side_by_side_as_far_as_the_cluster_holds_them(workers, use_gpu, memory_gb, cluster, asked, expected):
    from arhn_ray.evaluate.train import arms_at_once, worker_resources

    per_worker = worker_resources(use_gpu, memory_gb)
    assert per_worker == ({"GPU": 1.0} if use_gpu else {"CPU": 1.0}) | ({"memory": memory_gb * GIB} if memory_gb else {})
    assert arms_at_once(3, workers, per_worker, cluster, asked) == expected


def test_a_memory_reservation_no_node_can_grant_is_dropped_not_waited_for():
    """A 16 GB laptop gives Ray ~10 GiB: an 11 GiB worker would never be scheduled."""
    from arhn_ray.evaluate.train import reservable, worker_resources

    per_worker = worker_resources(False, 11.0)
    assert reservable(per_worker, 1, {"CPU": 8.0, "memory": 10 * GIB}) == {"CPU": 1.0}
    assert reservable(per_worker, 1, {"CPU": 8.0, "memory": 17 * GIB}) == per_worker
    assert reservable(worker_resources(True, None), 8, {"GPU": 16.0}) == {"GPU": 1.0}
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.evaluate.train import arm_layout

    # what evaluate and plan both decide: without the reservation the arms go one at a time, even if more were asked
    assert arm_layout(EvaluateConfig(arms_at_once=3), {"CPU": 8.0, "memory": 10 * GIB}) == ({"CPU": 1.0}, 1)
    assert arm_layout(EvaluateConfig(arms_at_once=3), {"CPU": 8.0, "memory": 40 * GIB}) == (per_worker, 3)


@pytest.mark.ray
def test_evaluate_runs_the_loop_and_writes_every_field(ray_cluster, tmp_path):
    """An ARHN output of the shipped sample (replayed), evaluated on the shipped set: the baseline is
    run on the fly, three arms are trained (small settings: the loop, not the method), and the
    JSON, table, picture and card section are written."""
    import tempfile

    import ray
    from test_deploy import _recordings
    from test_protocol import rlhn_refined_rows

    from arhn_ray.cli import main

    rec, n = _recordings(tmp_path)
    out = tmp_path / "out"
    assert main(["refine", str(ROOT / "conf" / "replay.yaml"), f"engine.replay_path={rec}", f"output.path={out}"]) == 0
    # RLHN's cleaning of the same queries, in the Tevatron rows rlhn/rlhn-680K publishes: an arm of its own
    rlhn = tmp_path / "rlhn" / "msmarco.jsonl"
    rlhn.parent.mkdir()
    rlhn.write_text("".join(json.dumps(r) + "\n" for r in rlhn_refined_rows()))
    workdirs = set(Path(tempfile.gettempdir()).glob("arhn-train-*"))
    # a batch larger than every arm (the bundled model's refined arm had 6 examples for a batch of 16): each trains on what it has;
    # one worker an arm here (three arms side by side on two cores): the two-worker split batch is the shared-store test's
    # evaluate as a person runs it, at an 80-column terminal (joining this session's cluster, as RAY_ADDRESS says)
    env = os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    code, screen = run_in_terminal([sys.executable, "-m", "arhn_ray", "evaluate", str(out), "--eval", str(EVAL), "max_seq_len=64", "negatives=3",
                                    "batch_size=64", "bootstrap_samples=200", "worker_memory_gb=2", "workers=1", "--arm", f"rlhn={rlhn.parent}"],
                                   env, timeout=1200)  # fmt: skip
    lines = [line for line in terminal_lines(screen) if line.strip()]
    assert code == 0 and "Traceback" not in screen, screen[-3000:]
    # only its own lines: the banner, its notices, progress, then the table (evaluate.md) and what it wrote;
    # Ray's, Ray Train's, transformers' and the libraries' lines go to the output's log
    from arhn_ray.cli.fit import for_terminal

    # the table as the 80-column terminal shows it (a wide table a block a row), and as the file keeps it
    markdown = (out / "evaluate" / "evaluate.md").read_text()
    table = set(markdown.splitlines()) | set(for_terminal(markdown, width=80).splitlines())
    ours = re.compile(r"^(arhn-ray: |  \S|progress: |[\d,]+ ?/ ?~?[\d,]+ rows|wrote\b)")
    theirs = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:|\(pid=|INFO|WARNING(?!:)|RayDeprecationWarning|core_worker|UserWarning")
    assert all((line in table or ours.match(line)) and not theirs.search(line) for line in lines), [
        line for line in lines if not (line in table or ours.match(line)) or theirs.search(line)
    ]
    tail = " ".join(" ".join(lines[-4:]).split())  # the last line, as the 80-column terminal wraps it
    assert lines[0].startswith("arhn-ray: evaluating ") and tail.endswith("evaluate.png and the card's section"), lines
    assert any(line.startswith("wrote") for line in lines[-4:]), lines
    assert sum(line in table for line in lines) >= 5, lines  # the table is on the screen
    assert list((out / "logs").glob("evaluate-*.log")), "the libraries' output has no log"
    result = json.loads((out / "evaluate" / "evaluate.json").read_text())
    assert set(result["arms"]) == {"zero_shot", "original", "refined", "topk_percpos", "rlhn"}
    assert (
        "| rlhn |" in (out / "evaluate" / "evaluate.md").read_text()
        and "rlhn - original: " in (out / "evaluate" / "evaluate.md").read_text()
    )
    for arm in result["arms"].values():
        assert (
            0.0 <= arm["ndcg@10"] <= 1.0 and 0.0 <= arm["recall@100"] <= 1.0 and arm["ndcg@10_ci95"][0] <= arm["ndcg@10_ci95"][1]
        )
    for pair in ("refined_vs_original", "refined_vs_topk_percpos", "rlhn_vs_original"):
        p = result["paired"][pair]
        assert (
            p["queries"] == 13
            and p["ci95"][0] <= p["delta"] <= p["ci95"][1]
            and p["inconclusive"] == (p["ci95"][0] <= 0 <= p["ci95"][1])
        )
    train = result["train"]
    assert train["hyperparameters"]["negatives"] == 3 and train["hyperparameters"]["model"] == "bundled:minilm"
    # the paper's protocol: one instance a query an epoch in every arm, whatever its positives; the RLHN
    # arm holds the output's queries it has (its 12 MS MARCO ones, not the FlagEmbedding sample's 8)
    arms = train["arms"]
    assert arms["original"]["examples"] == arms["original"]["queries"] == n == train["queries"]
    for arm in ("refined", "topk_percpos"):
        assert arms[arm]["examples"] == arms[arm]["queries"] == n - arms[arm]["queries_without_example"]
    assert arms["rlhn"]["examples"] == arms["rlhn"]["queries"] == 12
    # no training worker leaves its copy of the examples behind; what it held is reported
    assert set(Path(tempfile.gettempdir()).glob("arhn-train-*")) == workdirs
    assert all(arms[a]["worker_disk_mb"] > 0 for a in ("original", "refined", "topk_percpos", "rlhn"))
    for arm in ("original", "refined", "topk_percpos", "rlhn"):  # each arm was trained: steps taken, a finite contrastive loss
        t = train["arms"][arm]
        assert t["steps"] >= 1 and 0 < t["train_loss"] < 10, t
        # the trainer's own arguments: a global batch (the arm's queries when fewer than 64), all of it on the one worker
        assert t["batch_size"] == min(64, t["queries"]) and t["device_batch"] == t["batch_size"], t
        assert t["world_size"] == 1 and t["gather_across_devices"] is False and t["bf16"] is False, t
        # the run and its checkpoint live on the output's storage, not in a driver temp dir
        assert t["checkpoint"].startswith(str(out / "evaluate" / "train" / f"arhn-evaluate-{arm}")), t
    assert (out / "evaluate" / "examples" / "refined").is_dir() and any((out / "evaluate" / "embeddings" / EVAL.name).iterdir())
    assert result["sets"][EVAL.name]["detectable_ndcg@10_difference"] > 0.01 and result["sets"][EVAL.name]["queries"] == 13
    # the session cluster declares 24 CPUs and its memory (~17 GiB here) holds four 2 GiB workers: the four
    # arms train side by side, so the training took less than their own times added up
    four = ("original", "refined", "topk_percpos", "rlhn")
    assert train["arms_at_once"] == 4 and all(train["arms"][a]["peak_rss_gb"] > 0 for a in four)
    assert train["seconds"] < sum(train["arms"][a]["seconds"] for a in four), train
    assert (out / "evaluate" / "evaluate.png").stat().st_size > 0 and "| refined |" in (
        out / "evaluate" / "evaluate.md"
    ).read_text()
    card = (out / "README.md").read_text()
    assert card.count("## Retrieval evaluation") == 1 and "checks the loop, not the method" in card
    assert json.loads((out / "evaluate" / "topk_percpos" / "stats.json").read_text())["method"] == "topk_percpos"


@pytest.mark.ray
def test_an_arm_with_no_example_is_reported_not_trained_and_the_report_says_so(ray_cluster, tmp_path):
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.evaluate.report import table1_markdown
    from arhn_ray.evaluate.run import train_arms

    no_negatives = [{"query_id": "q", "query": "q?", "positive_passages": [{"docid": "p", "title": "", "text": "p"}],
                     "negative_passages": [], "subset": "s"}]  # fmt: skip
    from arhn_ray.data.layout import OutputLayout

    trained, _ = train_arms({"original": lambda: [], "refined": lambda: no_negatives, "topk_percpos": lambda: []}, {},
                            EvaluateConfig(workers=2), OutputLayout(str(tmp_path)))  # fmt: skip
    assert trained["refined"] == (None, {"examples": 0, "queries": 0, "queries_without_example": 1, "seed": 0, "trained": False})
    arms = {"zero_shot": {"ndcg@10": 0.5, "recall@100": 1.0, "ndcg@10_ci95": [0.4, 0.6]}, "refined": {"trained": False}}
    paired = {"refined_vs_original": {"skipped": "the refined arm was not trained (too few examples)"}}
    results = {"eval": {"queries": 13, "metrics": "m", "search": "s"}, "arms": arms, "paired": paired,
               "sets": {"x": {"queries": 13, "corpus": 650, "ood": False, "detectable_ndcg@10_difference": 0.05, "arms": arms, "paired": paired}},
               "train": {"hyperparameters": {"model": "m", "batch_size": 16, "workers": 2, "negatives": 7, "epochs": 1}, "arms": {a: m for a, (_, m) in trained.items()}}}  # fmt: skip
    text = table1_markdown(results)
    assert "| refined | 0 | 1 | not trained: fewer queries than workers" in text and "refined - original: not computed" in text
    assert "| x | 13 | 650 | 0.5000 | - | - | - |" in text


def test_the_detectable_difference_comes_from_the_spread_and_is_never_zero_for_a_varied_set():
    from arhn_ray.evaluate.run import detectable_difference

    same = [0.2, 0.9, 0.5, 0.7] * 3 + [0.1]  # 13 queries whose arms might all rank alike (a paired interval of width 0)
    import statistics

    assert detectable_difference(same) == round(1.96 * 2**0.5 * statistics.stdev(same) / 13**0.5, 4) > 0.1
    assert detectable_difference([0.5] * 13) == 0.0 and detectable_difference([0.5]) == 1.0


def test_the_paired_bootstrap_is_paired():
    """Against an independent computation: the mean per-query difference, and an interval that only a
    paired resampling makes this narrow (the two arms vary a lot, their difference hardly at all)."""
    import numpy as np

    from arhn_ray.evaluate.scoring import paired_bootstrap

    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 200)
    a = {f"q{i}": float(v + 0.02 + rng.normal(0, 0.005)) for i, v in enumerate(base)}
    b = {f"q{i}": float(v) for i, v in enumerate(base)}
    b["only_b"] = 0.3  # a query one arm lacks is left out
    p = paired_bootstrap(a, b, 2000, 0)
    diffs = [a[q] - b[q] for q in a]
    assert p["queries"] == 200 and abs(p["delta"] - sum(diffs) / 200) < 1e-4
    assert p["ci95"][0] > 0.015 and p["ci95"][1] < 0.025 and not p["inconclusive"]
    # an unpaired bootstrap of the same numbers: the arms' own spread makes the interval hold 0
    unpaired = [rng.choice(list(a.values()), 200).mean() - rng.choice(base, 200).mean() for _ in range(2000)]
    lo, hi = np.percentile(unpaired, [2.5, 97.5])
    assert lo < 0 < hi and not (p["ci95"][0] <= 0 <= p["ci95"][1])


def test_several_sets_average_as_table_1_does_each_set_weighing_the_same():
    """Two sets of different sizes: Avg. is the mean of the sets' means (not of all queries), the
    OOD average holds only the paper's out-of-domain sets, and the paired interval of the average
    resamples within each set (so it is narrower than either set's own)."""
    import numpy as np

    from arhn_ray.config import EvaluateConfig
    from arhn_ray.evaluate.run import summarize

    rng = np.random.default_rng(3)
    big = {f"b{i}": rng.uniform(0, 1) for i in range(300)}
    small = {f"s{i}": rng.uniform(0, 1) for i in range(30)}

    def arm(scores, shift):
        return {q: {"ndcg@10": min(1.0, v + shift), "recall@100": 1.0} for q, v in scores.items()}

    scores = {
        "original": [arm(big, 0.0), arm(small, 0.0)],
        "refined": [arm(big, 0.01), arm(small, 0.05)],
        "zero_shot": [arm(big, 0), arm(small, 0)],
    }
    s = summarize(scores, EvaluateConfig(bootstrap_samples=500))
    by_hand = (np.mean([min(1, v + 0.01) for v in big.values()]) + np.mean([min(1, v + 0.05) for v in small.values()])) / 2
    assert s["arms"]["refined"]["ndcg@10"] == pytest.approx(by_hand, abs=1e-4)
    pooled = np.mean([min(1, v + 0.01) for v in big.values()] + [min(1, v + 0.05) for v in small.values()])
    assert abs(by_hand - pooled) > 0.002  # the two averages differ: the test tells them apart
    p = s["paired"]["refined_vs_original"]
    assert p["queries"] == 330 and p["delta"] == pytest.approx(
        (np.mean([min(1, v + 0.01) - v for v in big.values()]) + np.mean([min(1, v + 0.05) - v for v in small.values()])) / 2,
        abs=1e-4,
    )
    assert s["paired"]["refined_vs_topk_percpos"]["skipped"].startswith("the topk_percpos arm")


def test_decision_agreement_gives_the_table_and_kappa_of_two_hand_built_outputs(tmp_path):
    """Two outputs deciding the same 10 negatives: a known confusion table, and kappa by its formula."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from arhn_ray.outputs.agreement import decision_agreement

    ref = ["relabel", "relabel", "filter", "filter", "filter", "keep", "keep", "keep", "keep", "keep"]
    ours = ["relabel", "filter", "filter", "filter", "keep", "keep", "keep", "keep", "keep", "relabel"]

    def output(name, actions, extra=()):
        rows = [{"query_id": "q1", "subset": "s", "decisions": [{"docid": f"d{i}", "action": a} for i, a in enumerate(actions[:5])]},
                {"query_id": "q2", "subset": "s", "decisions": [{"docid": f"d{i}", "action": a} for i, a in enumerate(actions[5:], 5)]
                 + list(extra)}]  # fmt: skip
        (tmp_path / name / "refined" / "x").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name / "refined" / "x" / "p0.parquet")
        return str(tmp_path / name)

    # a decision only one side made is not compared
    result = decision_agreement(output("ours", ours, [{"docid": "only-ours", "action": "keep"}]), output("ref", ref))
    overall = result["overall"]
    labels = overall["confusion"]["rows_reference_cols_arhn"]
    table = {(r, c): overall["confusion"]["matrix"][i][j] for i, r in enumerate(labels) for j, c in enumerate(labels)}
    assert overall["n"] == 10
    assert (table[("relabel", "relabel")], table[("relabel", "filter")], table[("filter", "filter")], table[("filter", "keep")],
            table[("keep", "keep")], table[("keep", "relabel")]) == (1, 1, 2, 1, 4, 1)  # fmt: skip
    po = 7 / 10
    pe = (2 * 2 + 3 * 3 + 5 * 5) / 100  # reference marginals 2/3/5, ours 2/3/5
    assert overall["kappa"] == pytest.approx((po - pe) / (1 - pe), abs=1e-4)


@pytest.mark.ray
def test_an_arm_trains_with_its_examples_runs_and_checkpoint_on_the_shared_store(ray_cluster, s3_server, tmp_path):
    """Issue 23: evaluate's training storage on a path the driver never created on its disk, the
    shared store every node of a cluster reads (moto's S3 on loopback): the examples, Ray Train's
    run and the checkpoint are written there by the workers, and nothing of it lands locally."""
    import fsspec
    from conftest import create_bucket

    from arhn_ray.bundled import resolve
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.evaluate.run import SETTINGS, train_arms

    create_bucket(s3_server, "evaluate")
    rows = [r for r in load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[:8]]
    ev = EvaluateConfig(workers=2, batch_size=8, max_seq_len=32, negatives=1, worker_memory_gb=2)
    settings = {k: getattr(ev, k) for k in SETTINGS} | {"model": resolve(ev.model)}
    out = OutputLayout("s3://evaluate/out", s3_server)
    trained, _ = train_arms({"original": lambda: rows, "refined": lambda: [], "topk_percpos": lambda: []}, settings, ev, out)
    checkpoint, metrics = trained["original"]
    assert metrics["trained"] and metrics["world_size"] == 2 and metrics["examples"] == 8, metrics
    # the cluster config's shape on CPU: two workers, the global batch (8 queries) split between them, gathered for MNRL
    assert metrics["batch_size"] == 8 and metrics["device_batch"] == 4 and metrics["gather_across_devices"] is True, metrics
    assert metrics["checkpoint"].startswith("s3://evaluate/out/evaluate/train/arhn-evaluate-original"), metrics
    s3 = fsspec.filesystem("s3", **s3_server)
    assert s3.ls(metrics["checkpoint"].removeprefix("s3://")), "the checkpoint is not on the store"
    assert s3.glob("evaluate/out/evaluate/examples/original/*.parquet")
    assert trained["refined"][0] is None and not (tmp_path / "evaluate").exists()


@pytest.mark.ray
def test_an_arm_trains_in_process_on_one_machine_and_its_checkpoint_serves_retrieval(ray_cluster, s3_server, tmp_path):
    """Issue 36: on a laptop (one worker, no cluster address) an arm trains in evaluate's own
    process, with no Ray Train controller or placement group for a loaded machine to trip; its
    checkpoint lands on the output's storage where Ray Train's would, and the encoders load it."""
    import tempfile

    import fsspec
    import numpy as np
    import pyarrow as pa
    from conftest import create_bucket

    from arhn_ray.bundled import resolve
    from arhn_ray.config import EvaluateConfig
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.evaluate.retrieve import Encoder
    from arhn_ray.evaluate.run import SETTINGS, train_arms
    from arhn_ray.evaluate.train import in_process

    create_bucket(s3_server, "laptop")
    rows = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[:8]
    ev = EvaluateConfig(batch_size=8, max_seq_len=32, negatives=1, worker_memory_gb=2)
    assert in_process(ev.trainer, ev.workers, None) and not in_process(ev.trainer, ev.workers, "10.0.0.1:6379")
    settings = {k: getattr(ev, k) for k in SETTINGS} | {"model": resolve(ev.model)}
    out = OutputLayout("s3://laptop/out", s3_server)
    workdirs = set(Path(tempfile.gettempdir()).glob("arhn-train-*"))
    trained, at_once = train_arms({"original": lambda: rows, "refined": lambda: []}, settings, ev, out, here=True)
    checkpoint, metrics = trained["original"]
    assert at_once == 1 and metrics["trainer"] == "in_process" and metrics["trained"], metrics
    assert (
        metrics["world_size"] == 1 and metrics["batch_size"] == 8 and metrics["steps"] >= 1 and 0 < metrics["train_loss"] < 10
    ), metrics
    assert metrics["checkpoint"].startswith("s3://laptop/out/evaluate/train/arhn-evaluate-original/"), metrics
    assert fsspec.filesystem("s3", **s3_server).ls(metrics["checkpoint"].removeprefix("s3://"))
    assert set(Path(tempfile.gettempdir()).glob("arhn-train-*")) == workdirs  # its copy of the examples is gone
    encoded = Encoder({"original": checkpoint}, "", 32, 8, False)(pa.table({"_id": ["a"], "text": ["what is a bird"]}))
    vector = np.asarray(encoded.column("original").to_pylist()[0])
    assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-3


def test_evaluate_says_what_it_does_at_least_every_interval(caplog):
    """Issue 36: 83 s of silence during training. The heartbeat repeats the phase while nothing else is said."""
    import logging
    import time

    from arhn_ray.evaluate.heartbeat import Heartbeat

    with caplog.at_level(logging.INFO, logger="arhn_ray.evaluate.heartbeat"):
        with Heartbeat(every_s=0.1).running() as beat:
            beat.phase("training original, refined (2 runs)")
            time.sleep(0.45)
        said = [r.getMessage() for r in caplog.records if r.name == "arhn_ray.evaluate.heartbeat"]
        time.sleep(0.3)
    assert len(said) >= 3 and all("training original, refined (2 runs)" in m for m in said[1:]), said
    assert all(getattr(r, "notice", False) for r in caplog.records)  # the terminal's handler shows notices
    assert len([r for r in caplog.records if r.name == "arhn_ray.evaluate.heartbeat"]) == len(said)  # stopped with the block
