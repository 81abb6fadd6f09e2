"""``arhn-ray``: refine, relabel, stats, agreement, export, prepare-model."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from arhn_ray.config import ConfigError, load_config


def _refine(args: argparse.Namespace) -> int:
    from arhn_ray.pipeline.job import run

    cfg = load_config(args.config, args.overrides)
    stats = run(cfg)
    print(summary(stats, cfg.output.path))
    return 0


def summary(stats: dict, output: str) -> str:
    o = stats["overall"]
    t = stats.get("throughput", {})
    lines = [
        f"arhn-ray: wrote {output}",
        f"  rows in       {o['queries'] + o['rejected']}",
        f"  refined       {o['queries']}",
        f"  rejected      {o['rejected']}  {stats['rejected_reasons'] or ''}",
        f"  negatives     {o['negatives_in']}: relabeled {o['relabel']}, filtered {o['filter']}, kept {o['keep']}",
        f"  stage 1       {o['stage1_calls']} calls, {o['stage1_prompt_tokens']} prompt + {o['stage1_output_tokens']} output tokens",
        f"  stage 2       {o['stage2_calls']} calls ({o['stage2_skipped']} skipped), "
        f"{o['stage2_prompt_tokens']} prompt + {o['stage2_output_tokens']} output tokens",
        f"  wall time     {t.get('wall_s', 0):.1f} s",
    ]
    if stats.get("unreadable_shards"):
        lines.append(f"  unreadable    {json.dumps(stats['unreadable_shards'])}")
    return "\n".join(lines)


def _prepare_model(args: argparse.Namespace) -> int:
    from arhn_ray.engines.bundled import prepare_model

    print(prepare_model(args.target))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from arhn_ray.stats import load_stats, write_report

    stats = load_stats(args.output)
    md, png = write_report(stats, args.output)
    print(md.read_text())
    print(f"picture: {png}")
    return 0


def _relabel(args: argparse.Namespace) -> int:
    from arhn_ray.pipeline.job import relabel

    overrides = [f"method.variant={args.variant}"]
    if args.positive_no_answer:
        overrides.append(f"method.positive_no_answer={args.positive_no_answer}")
    if args.max_relabeled is not None:
        overrides.append(f"method.max_relabeled={args.max_relabeled}")
    stats = relabel(args.output, args.out, overrides)
    print(summary(stats, args.out))
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from arhn_ray.agreement import agreement, render

    result = agreement(args.output, args.reference, stage2=args.stage2_reference, positive_actions=args.count_as)
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _export(args: argparse.Namespace) -> int:
    from arhn_ray.data.export import export

    n = export(args.output, args.format, args.out, negatives=args.negatives, seed=args.seed, prefixes=args.e5_prefixes, short=args.short)
    print(f"wrote {n} training rows to {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arhn-ray", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("refine", help="refine a dataset: CONFIG [key=value ...]")
    r.add_argument("config")
    r.add_argument("overrides", nargs="*", help="key=value, e.g. engine.replicas=8")
    r.set_defaults(fn=_refine)

    m = sub.add_parser("prepare-model", help="convert the bundled SmolLM2 GGUF file into a Hugging Face folder (once)")
    m.add_argument("--target", default=None)
    m.set_defaults(fn=_prepare_model)

    s = sub.add_parser("stats", help="render report.md and report.png of OUTPUT again")
    s.add_argument("output")
    s.set_defaults(fn=_stats)

    rl = sub.add_parser("relabel", help="recompute labels from the LLM outputs stored in OUTPUT, with no LLM")
    rl.add_argument("output")
    rl.add_argument("--variant", choices=["rf", "relabel", "filter"], required=True)
    rl.add_argument("--positive-no-answer", choices=["paper", "keep", "reject"], default=None)
    rl.add_argument("--max-relabeled", type=int, default=None)
    rl.add_argument("--out", required=True)
    rl.set_defaults(fn=_relabel)

    a = sub.add_parser("agreement", help="Cohen's kappa of OUTPUT's labels against reference judgments")
    a.add_argument("output")
    a.add_argument("--reference", required=True, help="JSONL/CSV {query_id, docid, label} or an RLHN verdict JSONL")
    a.add_argument("--stage2-reference", default=None, help="RLHN stage-2 verdicts; they decide the queries they hold")
    a.add_argument(
        "--count-as",
        choices=["relabel", "relabel+filter"],
        default="relabel",
        help="which ARHN actions count as 'false negative'",
    )
    a.add_argument("--json", default=None, help="also write the result here")
    a.set_defaults(fn=_agreement)

    e = sub.add_parser("export", help="training files from OUTPUT")
    e.add_argument("output")
    e.add_argument("--format", choices=["sentence-transformers", "flagembedding", "tevatron"], required=True)
    e.add_argument("--negatives", type=int, default=7)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--e5-prefixes", action="store_true", help="prefix 'query: ' and 'passage: ' (E5)")
    e.add_argument("--short", choices=["repeat", "drop", "keep"], default="repeat", help="rows with fewer negatives than asked")
    e.add_argument("--out", required=True)
    e.set_defaults(fn=_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
