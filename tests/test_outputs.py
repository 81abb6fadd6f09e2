"""Issue 5 on a replay run: kappa against RLHN's verdicts, relabel without an LLM, export, stats."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest
from helpers import RLHN_STAGE1, RLHN_STAGE2, ROOT, blocks, load_jsonl

from arhn_ray.cli import main
from arhn_ray.data.records import validate_row
from arhn_ray.method import labeling as lb
from arhn_ray.outputs.agreement import _rlhn_labels


def rlhn_verdicts(row: dict) -> dict[tuple[str, str], str]:
    """The test's own reading of an RLHN verdict, not the code under test's: the ``Doc (i)`` numbers
    between ``<better>`` and ``</better>`` are false negatives, every other negative is a negative."""
    response = row["response"]
    better = response[response.find("<better>") : response.find("</better>")] if "<better>" in response else ""
    numbers = {int(part.split(")")[0]) for part in better.split("Doc (")[1:]}
    return {(row["query_id"], n["docid"]): "false_negative" if i in numbers else "negative"
            for i, n in enumerate(row["negative_passages"], 1)}  # fmt: skip


def reference_verdicts() -> dict[tuple[str, str], str]:
    """RLHN's stage-1 verdicts, with its stage-2 verdicts deciding the queries they hold."""
    verdicts = {}
    for r in load_jsonl(RLHN_STAGE1):
        verdicts.update(rlhn_verdicts(r))
    for r in load_jsonl(RLHN_STAGE2):
        decided = {k: v for k, v in verdicts.items() if k[0] != r["query_id"]}
        verdicts = {**decided, **rlhn_verdicts(r)}
    return verdicts


def test_rlhn_verdicts_are_read_as_labelled_by_hand():
    """Two real verdicts, read by a person: only the documents under <better> are false negatives
    (those under <worse> are not), numbered from 1 into negative_passages."""
    first = next(r for r in load_jsonl(RLHN_STAGE1) if r["query_id"] == "e61a5737af172e3cf100e433b3dd3ca2")
    labels = _rlhn_labels(first)
    assert len(labels) == 25
    assert {d for (_, d), label in labels.items() if label == "false_negative"} == {
        "53cf1cb9f857148ca624c90000cfc3be"
    }  # Doc (21)
    assert labels[(first["query_id"], "b77cd9cfb4879112cc29431dade52e87")] == "negative"  # Doc (18), under <worse>
    second = load_jsonl(RLHN_STAGE2)[0]  # "<better> Preferred over or equally as ground truth: [Doc (9), Doc (18)] </better>"
    assert second["query_id"] == "30e5344ce410c048f01d18976f26087f"
    assert {d for (_, d), label in _rlhn_labels(second).items() if label == "false_negative"} == {
        "bd572a5bd7769cf1c205a6052f754a05", "24f01348e12402405af7220c1ece0235"}  # fmt: skip
    assert _rlhn_labels(second)[(second["query_id"], "8babf6d1454518eca4688b138e4f85f5")] == "negative"  # Doc (12), under <worse>


def perfect_recordings(rows: list[dict], verdicts: dict) -> list[dict]:
    """Stage 1 finds a snippet exactly in RLHN's 'better' negatives; Stage 2 ranks them above [1]."""
    rec = []
    for row in rows:
        plan = lb.plan_row(row, lb.MethodOptions(negatives_per_query=None))  # RLHN judged every negative
        anchor = row["positive_passages"][0]["text"][:40]
        for c, members in enumerate(plan.chunks):
            better = [verdicts[(row["query_id"], row["negative_passages"][i]["docid"])] == "false_negative" for i in members]
            snippets = [anchor] + [row["negative_passages"][i]["text"][:40] if b else None for i, b in zip(members, better)]
            rec.append({"query_id": row["query_id"], "stage": 1, "chunk": c, "text": blocks(snippets)})
            n_better = sum(better)
            if n_better:
                order = [f"[{k}]" for k in range(2, n_better + 2)] + ["[1]"]
                rec.append({"query_id": row["query_id"], "stage": 2, "chunk": c, "text": " > ".join(order)})
    return rec


@pytest.fixture(scope="module")
def replay_output(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    rows = [validate_row(r) for r in load_jsonl(RLHN_STAGE1)]
    verdicts = reference_verdicts()  # read by the test itself: a misreading in outputs/agreement.py cannot agree with it
    (tmp / "in").mkdir()
    with open(tmp / "in" / "msmarco.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(tmp / "rec.jsonl", "w") as f:
        for r in perfect_recordings(rows, verdicts):
            f.write(json.dumps(r) + "\n")
    out = tmp / "out"
    code = main(
        [
            "refine",
            str(ROOT / "conf" / "replay.yaml"),
            f"input.path={tmp / 'in'}",
            f"output.path={out}",
            f"engine.replay_path={tmp / 'rec.jsonl'}",
            "method.negatives_per_query=null",  # RLHN's verdicts cover all 25 negatives of a row
        ]
    )
    assert code == 0
    assert ray_cluster.is_initialized()  # the CLI leaves a Ray it did not start (the session's) up
    return out


@pytest.mark.ray
def test_kappa_is_one_for_a_run_built_to_agree_with_rlhn(replay_output, tmp_path, capsys):
    result_file = tmp_path / "kappa.json"
    code = main(
        [
            "agreement",
            str(replay_output),
            "--reference",
            str(RLHN_STAGE1),
            "--stage2-reference",
            str(RLHN_STAGE2),
            "--json",
            str(result_file),
        ]
    )
    assert code == 0
    result = json.loads(result_file.read_text())
    assert result["overall"]["kappa"] == 1.0
    assert result["overall"]["n"] == 25 * 25
    (fn_fn, fn_neg), (neg_fn, neg_neg) = result["overall"]["confusion"]["matrix"]
    assert fn_neg == 0 and neg_fn == 0 and fn_fn > 0
    assert "| msmarco_passage |" in capsys.readouterr().out


@pytest.mark.ray
def test_kappa_drops_when_filter_counts_as_false_negative_or_stage2_is_ignored(replay_output, tmp_path):
    from arhn_ray.outputs.agreement import agreement

    assert agreement(str(replay_output), str(RLHN_STAGE1))["overall"]["kappa"] < 1.0
    # a reference written from RLHN's verdicts (not from the output), then the same with one label flipped
    verdicts = reference_verdicts()
    csv_ref = tmp_path / "ref.csv"
    flipped = next(k for k, v in sorted(verdicts.items()) if v == "negative")

    def write(labels: dict) -> None:
        with open(csv_ref, "w") as f:
            f.write("query_id,docid,label\n" + "".join(f"{q},{d},{v}\n" for (q, d), v in sorted(labels.items())))

    write(verdicts)
    assert agreement(str(replay_output), str(csv_ref))["overall"]["kappa"] == 1.0
    write({**verdicts, flipped: "false_negative"})
    result = agreement(str(replay_output), str(csv_ref))["overall"]
    (fn_fn, fn_neg), (neg_fn, neg_neg) = result["confusion"]["matrix"]
    assert result["kappa"] < 1.0 and (fn_neg, neg_fn) == (1, 0)  # the reference says false negative, the run says negative


@pytest.mark.ray
def test_relabel_recomputes_variants_without_an_llm(replay_output, tmp_path):
    out = tmp_path / "filter-variant"
    assert main(["relabel", str(replay_output), "--variant", "filter", "--out", str(out)]) == 0
    before = {r["query_id"]: r for r in pq.read_table(replay_output / "refined" / "msmarco").to_pylist()}
    after = {r["query_id"]: r for r in pq.read_table(out / "refined" / "msmarco").to_pylist()}
    assert before.keys() == after.keys()
    changed = 0
    for qid, row in before.items():
        for d0, d1 in zip(row["decisions"], after[qid]["decisions"]):
            assert d0["docid"] == d1["docid"] and d0["snippet"] == d1["snippet"]
            if d0["action"] == "relabel":
                assert d1["action"] == "keep"
                changed += 1
            else:
                assert d1["action"] == d0["action"]
    assert changed > 0
    assert json.loads((out / "stats.json").read_text())["variant"] == "filter"
    assert (out / "report.png").stat().st_size > 0


@pytest.mark.ray
def test_stats_renders_again(replay_output, capsys):
    (replay_output / "report.md").unlink()
    assert main(["stats", str(replay_output)]) == 0
    assert "# ARHN refinement report" in (replay_output / "report.md").read_text()
    assert "picture:" in capsys.readouterr().out


@pytest.mark.ray
def test_export_three_formats(replay_output, tmp_path, capsys):
    from datasets import load_dataset

    st = tmp_path / "st.parquet"
    assert (
        main(
            [
                "export",
                str(replay_output),
                "--format",
                "sentence-transformers",
                "--negatives",
                "7",
                "--seed",
                "3",
                "--e5-prefixes",
                "--out",
                str(st),
            ]
        )
        == 0
    )
    ds = load_dataset("parquet", data_files=str(st), split="train")
    assert ds.column_names == ["anchor", "positive"] + [f"negative_{i}" for i in range(1, 8)]
    refined = pq.read_table(replay_output / "refined" / "msmarco").to_pylist()
    assert len(ds) == len(refined)  # the paper's instance: one a query, whatever its positives
    assert len(set(ds["anchor"])) == len(refined)
    assert all(a.startswith("query: ") for a in ds["anchor"]) and all(p.startswith("passage: ") for p in ds["negative_7"])

    fe = tmp_path / "fe.jsonl"
    assert main(["export", str(replay_output), "--format", "flagembedding", "--out", str(fe)]) == 0
    fe_rows = [json.loads(line) for line in fe.read_text().splitlines()]
    by_query = {r["query"]: r for r in refined}
    for rec in fe_rows:
        src = by_query[rec["query"]]
        assert set(rec) == {"query", "pos", "neg"}
        assert rec["pos"] == [p["text"] for p in src["positive_passages"]]
        kept = {n["text"] for n in src["negative_passages"]}
        assert len(rec["neg"]) == 7 and set(rec["neg"]) <= kept
        if len(kept) >= 7:
            assert len(set(rec["neg"])) == 7

    tev = tmp_path / "tev.jsonl"
    assert main(["export", str(replay_output), "--format", "tevatron", "--short", "drop", "--out", str(tev)]) == 0
    tev_rows = [json.loads(line) for line in tev.read_text().splitlines()]
    assert len(tev_rows) == sum(len(r["negative_passages"]) >= 7 for r in refined)
    short = sum(0 < len(r["negative_passages"]) < 7 for r in refined)
    none = sum(not r["negative_passages"] for r in refined)
    said = capsys.readouterr().out
    assert f"from {len(tev_rows)} of {len(refined)} queries" in said, said
    assert (f"{short} fewer than 7 kept negatives (--short drop)" in said) == bool(short), said
    assert (f"{none} no kept negative" in said) == bool(none) and ("left out" in said) == bool(short + none), said
    # nothing to write: said, and not exit 0
    assert (
        main(["export", str(replay_output), "--format", "tevatron", "--short", "drop", "--negatives", "100", "--out", str(tev)])
        == 3
    )
    captured = capsys.readouterr()
    said = captured.out
    assert f"from 0 of {len(refined)} queries" in said and f"left out     {len(refined)} fewer than 100 kept negatives" in said, (
        said
    )
    assert "no training row" in captured.err
    for rec in tev_rows:
        src = next(r for r in refined if r["query_id"] == rec["query_id"])
        assert set(rec) == {"query_id", "query", "positive_passages", "negative_passages", "subset"}
        assert [p["docid"] for p in rec["positive_passages"]] == [p["docid"] for p in src["positive_passages"]]
        assert {n["docid"] for n in rec["negative_passages"]} <= {n["docid"] for n in src["negative_passages"]}
        assert all(set(p) == {"docid", "title", "text"} for p in rec["negative_passages"])

    again = tmp_path / "fe2.jsonl"
    main(["export", str(replay_output), "--format", "flagembedding", "--out", str(again)])
    assert again.read_text() == fe.read_text()


@pytest.mark.ray
def test_the_output_is_a_dataset_people_load(replay_output, tmp_path, capsys):
    """refined/ loads with Hugging Face datasets as it is; so does every export format, in the
    file type its name asks for; the output folder carries a dataset card."""
    from datasets import load_dataset

    refined = load_dataset("parquet", data_files=str(replay_output / "refined" / "*" / "*.parquet"), split="train")
    stats = json.loads((replay_output / "stats.json").read_text())
    assert len(refined) == stats["overall"]["queries"] and "decisions" in refined.column_names
    card = (replay_output / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "data_files: refined/*/*.parquet" in card
    assert f"{stats['overall']['queries']} queries refined" in card and stats["config_digest"] in card
    # which config wrote the output: the digest of the config.yaml it keeps (so a reader can check it)
    assert stats["config_digest"] == hashlib.sha256((replay_output / "config.yaml").read_bytes()).hexdigest()[:16]
    assert "NOT fit for training" not in card  # a replay of recorded labels, not the bundled model

    for fmt in ("sentence-transformers", "flagembedding", "tevatron"):
        for ext in ("parquet", "jsonl"):
            out = tmp_path / f"{fmt}.{ext}"
            assert main(["export", str(replay_output), "--format", fmt, "--out", str(out)]) == 0
            assert f"to {out} as {ext}, from " in capsys.readouterr().out
            ds = load_dataset("parquet" if ext == "parquet" else "json", data_files=str(out), split="train")
            assert len(ds) > 0
            if ext == "parquet":
                assert pq.read_metadata(out).num_rows == len(ds)  # a real parquet file, not JSON lines
    assert main(["export", str(replay_output), "--format", "tevatron", "--out", str(tmp_path / "x.csv")]) == 2
    assert "name a .parquet or a .jsonl file" in capsys.readouterr().err


def test_the_card_warns_when_the_bundled_model_labeled_the_data():
    from arhn_ray.outputs.card import render_card

    base = {"overall": {"queries": 20, "rejected": 0, "negatives_in": 500, "relabel": 0, "filter": 481, "keep": 19,
                        "per_query": {"relabel": 0, "filter": 24.05, "keep": 0.95}, "no_answer_rate": 0.038,
                        "stage1_prompt_tokens": 1, "stage1_output_tokens": 1, "stage1_calls": 60, "stage2_prompt_tokens": 1,
                        "stage2_output_tokens": 1, "stage2_calls": 59, "stage2_skipped": 1},
            "subsets": {}, "grounding": {}, "stage2_status": {}, "decision_reasons": {}, "rejected_reasons": {}}  # fmt: skip
    card = render_card({**base, "model": "bundled:smollm2"})
    assert "NOT fit for training" in card and "filtered 481 of 500 negatives" in card
    assert "NOT fit for training" not in render_card({**base, "model": "Qwen/Qwen3-32B"})


def test_help_reads_as_plain_text_with_an_example_for_each_command(capsys):
    import pytest

    for argv in ([], ["refine"], ["plan"], ["stage"], ["stats"], ["relabel"], ["agreement"], ["review"], ["evaluate"], ["export"], ["calibrate"],
                 ["prepare-model"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and "arhn-ray " in text.split("example", 1)[1], argv


def test_plan_reports_the_shipped_sample_without_calling_an_llm(capsys, tmp_path):
    # its own output folder: the README's first command writes out/local, and plan skips written parts
    assert main(["plan", str(ROOT / "conf" / "local.yaml"), f"output.path={tmp_path}", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # input.limit: 4 a file; the paper's N = 10: one Stage 1 call a query, the rest of the 25 not judged
    assert (plan["rows"], plan["stage1_calls"], plan["chunks"], plan["negatives"]) == (8, 8, 8, 200)
    assert plan["unjudged"] + plan["duplicates_of_positive"] == 200 - 8 * 10
    assert plan["stage2_calls_at_most"] == 8 and plan["stage1_prompt_tokens"] > 0
    assert plan["tokenizer"].startswith("bundled:smollm2 (the model's own tokenizer")
    assert main(["plan", str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"), f"input.path={ROOT / 'arhn_ray' / 'samples'}",
                 f"output.path={tmp_path / 'a100'}"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "on 16 GPUs" in text and "GPU-hours" in text and str(tmp_path / "a100") in text
    assert "evaluate          ~" in text and "9 runs (3 arms x seeds), 2 at a time" in text


def test_plan_asks_the_hub_nothing_even_where_the_hub_library_is_already_loaded(capsys, monkeypatch):
    """In a notebook (or this test session) huggingface_hub is imported before plan runs, so an
    environment switch plan set would come too late: a tokenizer not on this machine made it
    retry the unreachable hub for minutes (93 s in a CI run). Plan loads local files only, and
    leaves the caller's environment as it was."""
    import huggingface_hub.file_download as fd

    asked = []

    def no_network(url, *args, **kwargs):
        asked.append(url)
        raise OSError("no hub here")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(fd, "get_hf_file_metadata", no_network)
    assert main(["plan", str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"), "input.path=arhn_ray/samples", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stage1_calls"] == 20
    assert asked == [] and "HF_HUB_OFFLINE" not in os.environ


def test_plan_prices_evaluate_from_the_rows_and_the_stated_rates(capsys, tmp_path):
    """Three arms a seed of one training instance a valid row an epoch: the A100 config's 3 seeds
    x 3 arms, 5 epochs, 8-GPU runs two at a time on its 16 GPUs (five rounds), one CPU worker each
    on this machine's CPUs (memory not reserved here: the rule that counts it is tested in
    test_evaluate.py)."""
    import os

    from arhn_ray.plan import Assumptions

    assert main(["plan", str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"), "input.path=arhn_ray/samples", "--json",
                 "--train-queries-per-gpu-s", "0.01"]) == 0  # fmt: skip
    gpu = json.loads(capsys.readouterr().out)
    assert (gpu["evaluate_device"], gpu["evaluate_arms_at_once"]) == ("GPU", 2)
    arm_s = (gpu["rows"] - gpu["rows_invalid"]) * 5 / (8 * 0.01)
    assert gpu["evaluate_runs"] == 9 and gpu["evaluate_hours"] == pytest.approx(5 * arm_s / 3600)
    assert gpu["evaluate_device_hours"] == pytest.approx(9 * 8 * arm_s / 3600)
    assert main(["plan", str(ROOT / "conf" / "local.yaml"), "--json", "evaluate.epochs=2", "evaluate.worker_memory_gb=null",
                 f"output.path={tmp_path}"]) == 0  # fmt: skip
    cpu = json.loads(capsys.readouterr().out)
    at_once = min(3, os.cpu_count() or 1)
    assert (cpu["evaluate_device"], cpu["evaluate_arms_at_once"]) == ("CPU", at_once)
    arm_s = (cpu["rows"] - cpu["rows_invalid"]) * 2 / Assumptions().train_queries_per_cpu_s  # two epochs
    assert cpu["evaluate_hours"] == pytest.approx(-(-3 // at_once) * arm_s / 3600)


def test_plan_prices_sentence_ids_below_copied_text(capsys):
    """Numbered sentences lengthen the prompt a little; one short line a document instead of a
    copied span in blocks shortens the output, which costs ~4x more GPU time per token."""
    runs = {}
    for mode in ("text", "sentence_ids"):
        args = [
            "plan",
            str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"),
            "input.path=arhn_ray/samples",
            f"stage1.output={mode}",
            "--json",
        ]
        assert main(args) == 0
        runs[mode] = json.loads(capsys.readouterr().out)
    text, ids = runs["text"], runs["sentence_ids"]
    assert text["stage1_prompt_tokens"] < ids["stage1_prompt_tokens"] < 1.2 * text["stage1_prompt_tokens"]
    assert ids["stage1_output_tokens"] < 0.3 * text["stage1_output_tokens"]
    assert 0 < ids["gpu_hours"] < 0.9 * text["gpu_hours"]
