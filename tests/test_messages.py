"""What a newcomer reads (issue 28): errors that name the key and its allowed values, a usage
line that asks only for what is required, a summary that fits 80 columns, counts written as a
person reads them. Quick tier: no Ray, no vLLM."""

from __future__ import annotations

import json
import re

import pytest

from arhn_ray.cli import main, summary


def test_refine_without_a_config_asks_for_the_config_only(capsys):
    with pytest.raises(SystemExit) as e:
        main(["refine"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "required: config" in err and "overrides" not in err.splitlines()[-1], err


def test_a_bad_variant_names_the_key_and_the_allowed_values(capsys):
    assert main(["plan", "conf/local.yaml", "method.variant=foo"]) == 2
    err = capsys.readouterr().err
    assert "'method.variant': 'foo' is not one of rf, relabel, filter" in err and "'stage1' /" not in err, err


def _stats(**overall) -> dict:
    o = {"queries": 20, "rejected": 3, "negatives_in": 500, "relabel": 0, "filter": 481, "keep": 19, "stage1_calls": 60,
         "stage1_prompt_tokens": 1_234_567, "stage1_output_tokens": 123_456, "stage2_calls": 59, "stage2_skipped": 1,
         "stage2_prompt_tokens": 1_234_567, "stage2_output_tokens": 123_456, **overall}  # fmt: skip
    return {"overall": o, "rejected_reasons": {"invalid JSON": 2, "positive_passages": 1}, "model": "bundled:smollm2",
            "this_run": {"wall_s": 310.0, "refined": True}, "preemptions": 3}  # fmt: skip


def test_the_summary_of_a_bundled_model_run_fits_80_columns_and_counts_rejections_in_words():
    text = summary(_stats(), "out/local")
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "  rejected      3 (2 invalid JSON, 1 positive_passages)" in lines
    assert "{" not in text
    note = " ".join(text[text.index("  NOTE") :].split())
    assert "NOT fit for training" in note and "conf/qwen3-32b-a100x16.yaml" in note  # wrapped, not cut


def test_a_truncated_json_line_is_rejected_with_a_message_that_reads(tmp_path):
    from arhn_ray.data.parts import plan_parts, read_part

    path = tmp_path / "broken.jsonl"
    first, broken = json.dumps({"query_id": "q1"}) + "\n", '{"query_id": "q2", "query": "cut off\n'
    path.write_text(first + broken)
    rows = [row for part in plan_parts(str(path), 10) for row in read_part(part)]
    errors = [err for _, _, err in rows if err]
    column = broken.index('"cut') + 1
    assert errors == [f"invalid JSON: Unterminated string starting at column {column} of the line at byte {len(first)}"]
    assert "at at" not in errors[0]


def test_the_progress_line_moves_while_no_batch_arrives():
    """The engines' start: minutes on a CPU before the first batch. The heartbeat prints the line
    again, with the time so far, instead of leaving the start line for minutes."""
    import logging
    import time
    from collections import Counter
    from types import SimpleNamespace

    from arhn_ray.data.parts import plan_parts
    from arhn_ray.pipeline.progress import Progress

    parts = plan_parts("arhn_ray/samples/rlhn_msmarco.jsonl", 5)
    sink = SimpleNamespace(finished=[], rows_done=0, counts=Counter(relabel=0, filter=0, keep=0, rejected=0))
    progress = Progress(parts, [])
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("arhn_ray.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with progress.heartbeat(sink, every_s=0.2):
            time.sleep(1.1)
            quiet_start = len(lines)
            sink.rows_done = 5
            progress.update(sink, force=True)
            time.sleep(0.1)
    finally:
        logger.removeHandler(handler)
    assert quiet_start >= 3 and all("no row back yet" in line for line in lines[:quiet_start]), lines
    assert "5 / ~" in lines[quiet_start] and "left" in lines[quiet_start], lines


def test_time_left_is_the_replicas_pace_not_the_engines_start_spread_over_the_rows():
    """The embedded default: one replica, 8 rows in batches of 4; the engine took ~100 s to start
    and the first batch 20 s. With 4 rows back at 120 s, the 4 left take one batch: ~20 s, not
    the 120 s that dividing by the elapsed time gives; with two replicas and two batches left,
    both work at once."""
    from collections import Counter
    from types import SimpleNamespace

    from arhn_ray.data.parts import plan_parts
    from arhn_ray.pipeline.progress import Progress

    parts = plan_parts("arhn_ray/samples/rlhn_msmarco.jsonl", 100)
    progress = Progress(parts, [], replicas=1, batch_size=4)
    progress.sizes = {key: 8 for key in progress.sizes}
    progress.exact = set(progress.sizes)
    progress.started -= 120
    sink = SimpleNamespace(finished=[], rows_done=4, engine_s=20.0, counts=Counter(relabel=0, filter=4, keep=0, rejected=0))
    line = progress.line(sink)
    assert "0.2 rows/s, 20 s left" in line, line
    sink.engine_s = 0.0  # a sink that does not say how busy its replicas were: the elapsed pace
    assert "120 s left" in progress.line(sink) or "2 min left" in progress.line(sink), progress.line(sink)
    progress.replicas, progress.sizes = 2, {key: 12 for key in progress.sizes}
    sink.engine_s = 20.0
    assert "0.4 rows/s, 20 s left" in progress.line(sink), progress.line(sink)


def test_the_log_path_on_the_start_line_is_the_one_the_user_can_type(tmp_path, monkeypatch):
    from arhn_ray.cli.console import shown

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "out" / "local" / "logs" / "refine-20261203-080949.log"
    assert shown(str(log)) == "out/local/logs/refine-20261203-080949.log"
    assert len(f"  Ray and vLLM log to {shown(str(log))}; -v shows them") <= 80  # the README's run, at 80 columns
    assert shown("/var/log/elsewhere.log") == "/var/log/elsewhere.log" and shown("s3-logs/x.log") == "s3-logs/x.log"


def test_while_a_retry_waits_for_replicas_the_line_says_so_not_a_frozen_time_left():
    """Issue 36: after a lost node the line stayed on "453 / ~1,506 rows ... 23 s left" for minutes.
    While the retry starts replicas on the nodes left, the line says what it waits for and how long."""
    from collections import Counter
    from types import SimpleNamespace

    from arhn_ray.data.parts import plan_parts
    from arhn_ray.pipeline.progress import Progress

    progress = Progress(plan_parts("arhn_ray/samples/rlhn_msmarco.jsonl", 100), [], replicas=2, batch_size=4)
    sink = SimpleNamespace(finished=[], rows_done=4, engine_s=20.0, counts=Counter(relabel=0, filter=4, keep=0, rejected=0))
    assert "left" in progress.line(sink) and "waiting" not in progress.line(sink)
    progress.wait_for("attempt 2 of 3: starting replicas on the nodes left (stops after 600 s without one)")
    progress.waiting_since -= 95
    line = progress.line(sink)
    assert "attempt 2 of 3: starting replicas on the nodes left" in line and "95 s so far" in line, line
    assert not re.search(r"\d (s|min) left", line), line
    progress.wait_for(None)  # rows come back
    assert re.search(r"\d (s|min) left", progress.line(sink))
