"""What each ``arhn-ray`` command does, a function a command (arguments.py defines their options)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from arhn_ray.cli.console import counts, quietly, say, summary
from arhn_ray.cli.fit import for_terminal
from arhn_ray.config import load_config
from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.plan import Assumptions


def refine(args: argparse.Namespace) -> int:
    from arhn_ray.pipeline.faults import ClusterFault, StoreFailed
    from arhn_ray.pipeline.job import EmptyInput, TooManyRejected, run
    from arhn_ray.pipeline.preflight import PreflightError, check_output

    cfg = load_config(args.config, args.overrides)
    out = OutputLayout(cfg.output.path, cfg.output.storage_options)
    try:
        check_output(out)  # before the log file, which goes under the output
        banner = f"refining {cfg.input.path} -> {cfg.output.path}"
        work = lambda: run(cfg, args.config, out)  # noqa: E731
        stats = work() if args.verbose else quietly(work, out, "refine", banner)
    except EmptyInput as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    except TooManyRejected as e:
        print(f"arhn-ray: stopped: {e}", file=sys.stderr)
        return 3
    except (ClusterFault, StoreFailed) as e:
        print(f"arhn-ray: stopped: {e}", file=sys.stderr)
        return 5
    except PreflightError as e:
        print(f"arhn-ray: preflight: {e}", file=sys.stderr)
        return 4
    print(summary(stats, cfg.output.path))
    return every_row_rejected(stats, cfg.output.path)


def every_row_rejected(stats: dict, output: str) -> int:
    """3 when the run refined no row and rejected some (a missing column, a wrong format), naming the
    most common reason; else 0."""
    o = stats["overall"]
    if o["queries"] or not o["rejected"]:
        return 0
    reasons = stats.get("rejected_reasons") or {}
    top = max(reasons, key=reasons.get) if reasons else "unknown"
    print(f"arhn-ray: every row was rejected ({o['rejected']}; most often: {top}): nothing refined; "
          f"the rows and their reasons are in {output}/rejected/", file=sys.stderr)  # fmt: skip
    return 3


def plan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from arhn_ray.cli.console import render_plan
    from arhn_ray.plan import make_plan

    cfg = load_config(args.config, args.overrides)
    rates = replace(
        Assumptions().rates,
        fraction_of_peak=args.fraction_of_peak,
        fraction_of_bandwidth=args.fraction_of_bandwidth,
        step_tokens=cfg.engine.max_num_batched_tokens or Assumptions().rates.step_tokens,
    )
    assume = replace(Assumptions(), sample_rows=args.sample_rows, rates=rates, train_queries_per_gpu_s=args.train_queries_per_gpu_s,
                     teacher_pairs_per_gpu_s=args.teacher_pairs_per_gpu_s)  # fmt: skip
    result = make_plan(cfg, assume)
    print(json.dumps(result.to_dict(), indent=2) if args.json else for_terminal(render_plan(result)))
    return 0


def stage(args: argparse.Namespace) -> int:
    from arhn_ray.model_cache import required_repos, stage

    cfg = load_config(args.config, args.overrides)
    if args.list:
        for repo in required_repos(cfg, evaluate=True):
            print(f"{repo.name}\t{repo.use}\t{'tokenizer' if repo.tokenizer_only else 'model'}")
        return 0
    staged = stage(cfg)
    for repo, path in staged:
        print(f"staged {repo.name} ({repo.use}) -> {path}")
    if not staged:
        print("nothing to stage: this config loads no model from the Hugging Face hub")
    return 0


def prepare_model(args: argparse.Namespace) -> int:
    from arhn_ray.bundled import prepare_model

    print(f"arhn-ray: the bundled SmolLM2 model is ready in {prepare_model(args.target)}")
    return 0


def stats(args: argparse.Namespace) -> int:
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.outputs.report import render_report
    from arhn_ray.outputs.stats import load_stats

    out = OutputLayout(args.output, args.storage_options)
    render_report(out, load_stats(out))
    print(for_terminal(out.read_text(layout.REPORT_MD)))
    print(f"picture: {out.file(layout.REPORT_PNG)}")
    return 0


def relabel(args: argparse.Namespace) -> int:
    from arhn_ray.pipeline.relabel import label_again

    overrides = [f"method.variant={args.variant}"]
    if args.positive_no_answer:
        overrides.append(f"method.positive_no_answer={args.positive_no_answer}")
    if args.max_relabeled is not None:
        overrides.append(f"method.max_relabeled={args.max_relabeled}")
    say(f"arhn-ray: relabeling {args.output} -> {args.out} (variant {args.variant}, from the stored LLM outputs: no LLM, no Ray)")
    ours = logging.getLogger("arhn_ray")
    level = ours.level
    if not args.verbose:  # the parts' INFO lines stay off the terminal: the summary says what was written
        ours.setLevel(logging.WARNING)
    try:
        stats = label_again(args.output, args.out, overrides, args.storage_options)
    finally:
        ours.setLevel(level)
    print(summary(stats, args.out))
    return 0


def agreement(args: argparse.Namespace) -> int:
    from arhn_ray.outputs.agreement import agreement, decision_agreement, is_output, is_row_dataset, render, rows_agreement

    if is_output(args.reference, args.storage_options):
        result = decision_agreement(args.output, args.reference, args.storage_options)
    elif is_row_dataset(args.reference, args.storage_options):  # e.g. hf://datasets/rlhn/rlhn-680K@<commit>
        result = rows_agreement(args.output, args.reference, args.storage_options)
    else:
        result = agreement(args.output, args.reference, stage2=args.stage2_reference, positive_actions=args.count_as,
                           storage_options=args.storage_options)  # fmt: skip
    print(for_terminal(render(result)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def calibrate(args: argparse.Namespace) -> int:
    from arhn_ray.outputs.calibrate import NotACalibrationRun, calibrate, render

    try:
        result = calibrate(args.output, args.kappa, args.storage_options)
    except NotACalibrationRun as e:
        print(f"arhn-ray calibrate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else for_terminal(render(result)))
    if not args.json:
        print(f"wrote {OutputLayout(args.output, args.storage_options).file(layout.CALIBRATE_PNG)}")
    return 0


def review(args: argparse.Namespace) -> int:
    from arhn_ray.outputs.review import write_review

    out = OutputLayout(args.output, args.storage_options)
    written = write_review(out, args.sample, args.seed, args.subset or None)
    say(f"arhn-ray: wrote {written.path}\n  {written.queries} queries, {written.negatives} negatives, "
          f"{written.bytes / 1e6:.1f} MB in {written.seconds:.1f} s; open it in a browser, mark negatives, download the verdicts,\n"
          f"  then: arhn-ray agreement {args.output} --reference verdicts.jsonl")  # fmt: skip
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from arhn_ray.evaluate.arms import extra_arms
    from arhn_ray.evaluate.beir import BeirError
    from arhn_ray.evaluate.report import table1_markdown
    from arhn_ray.evaluate.run import evaluate

    out = OutputLayout(args.output, args.storage_options)
    work = lambda: evaluate(args.output, args.eval, args.overrides, baseline=args.baseline, storage_options=args.storage_options,  # noqa: E731
                            arms=args.arm)  # fmt: skip
    try:
        extra_arms(args.arm)  # a bad --arm before any work
    except ValueError as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    try:
        result = work() if args.verbose else quietly(work, out, "evaluate", f"evaluating {args.output} on {', '.join(args.eval)}")
    except BeirError as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    print(for_terminal(table1_markdown(result)))
    note = _demo_note(args.output, args.storage_options)
    if note:
        say(f"NOTE: the refined arm trained on demo labels. {note}")
    say(f"wrote {args.output.rstrip('/')}/evaluate/evaluate.json, evaluate.md, evaluate.png and the card's section")
    return 0


def export(args: argparse.Namespace) -> int:
    from arhn_ray.data.export import export, file_type

    try:
        kind = file_type(args.out)
        written = export(args.output, args.format, args.out, negatives=args.negatives, seed=args.seed, prefixes=args.e5_prefixes, short=args.short,
                   storage_options=args.storage_options, rule=args.examples)  # fmt: skip
    except ValueError as e:  # a bad --out, --format or --short: named, no traceback
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    say(
        f"arhn-ray: wrote {written.rows} training rows ({args.format}) to {args.out} as {kind}, "
        f"from {written.queries - sum(written.dropped.values())} of {written.queries} queries"
    )
    if written.dropped:
        say(
            f"  left out     {counts(written.dropped)}"
            + (
                "; --short keep writes the queries with fewer negatives"
                if args.short != "keep" and args.format != "sentence-transformers"
                else ""
            ),
            hang=13,
        )
    note = _demo_note(args.output, args.storage_options)
    if note:
        say(f"  NOTE         {note}", hang=13)
    if not written.rows:
        say(f"arhn-ray: export: no training row from {args.output}: every query was left out ({counts(written.dropped) or 'no refined row'})",
            file=sys.stderr)  # fmt: skip
        return 3
    return 0


def _demo_note(output: str, storage_options: dict) -> str | None:
    """The bundled model's warning, carried to what is derived from its labels (None for real labels)."""
    from arhn_ray.outputs.stats import demo_labels, load_stats

    try:
        return demo_labels(load_stats(OutputLayout(output, storage_options)))
    except (FileNotFoundError, KeyError, ValueError):
        return None
