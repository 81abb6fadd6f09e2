"""arhn-ray: clean hard-negative training data for dense retrievers with ARHN.

An LLM copies an answer snippet (or NO_ANSWER) out of each passage of a query, then ranks the
snippets with the positive's first; negatives ranked above the positive are relabeled as
positives, those below it that carry a snippet are filtered out, the rest are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from arhn_ray.agreement import COUNT_AS
from arhn_ray.config import ConfigError, load_config
from arhn_ray.console import counts, quietly, summary
from arhn_ray.data.export import FORMATS as EXPORT_FORMATS
from arhn_ray.data.export import SHORT_POLICIES
from arhn_ray.data.layout import OutputLayout
from arhn_ray.method.labeling import POSITIVE_NO_ANSWER, VARIANTS
from arhn_ray.plan import Assumptions


def _refine(args: argparse.Namespace) -> int:
    from arhn_ray.pipeline.faults import ClusterFault, StoreFailed
    from arhn_ray.pipeline.job import TooManyRejected, run
    from arhn_ray.pipeline.preflight import PreflightError, check_output

    cfg = load_config(args.config, args.overrides)
    try:
        check_output(cfg)  # before the log file, which goes under the output
        banner = f"refining {cfg.input.path} -> {cfg.output.path}"
        stats = (
            run(cfg, args.config)
            if args.verbose
            else quietly(
                lambda: run(cfg, args.config), OutputLayout(cfg.output.path, cfg.output.storage_options), "refine", banner
            )
        )
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
    return 0


def _plan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from arhn_ray.plan import make_plan, render

    cfg = load_config(args.config, args.overrides)
    assume = replace(Assumptions(), sample_rows=args.sample_rows, prefill_tokens_per_gpu_s=args.prefill_tokens_per_gpu_s,
                     decode_tokens_per_gpu_s=args.decode_tokens_per_gpu_s, train_queries_per_gpu_s=args.train_queries_per_gpu_s)  # fmt: skip
    result = make_plan(cfg, assume)
    print(json.dumps(result.to_dict(), indent=2) if args.json else render(result))
    return 0


def _stage(args: argparse.Namespace) -> int:
    from arhn_ray.staging import required_repos, stage

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


def _prepare_model(args: argparse.Namespace) -> int:
    from arhn_ray.bundled import prepare_model

    print(f"arhn-ray: the bundled SmolLM2 model is ready in {prepare_model(args.target)}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.pipeline.report import render_report
    from arhn_ray.stats import load_stats

    out = OutputLayout(args.output, args.storage_options)
    render_report(out, load_stats(out))
    print(out.read_text("report.md"))
    print(f"picture: {out.file('report.png')}")
    return 0


def _relabel(args: argparse.Namespace) -> int:
    from arhn_ray.relabel import relabel

    overrides = [f"method.variant={args.variant}"]
    if args.positive_no_answer:
        overrides.append(f"method.positive_no_answer={args.positive_no_answer}")
    if args.max_relabeled is not None:
        overrides.append(f"method.max_relabeled={args.max_relabeled}")
    work = lambda: relabel(args.output, args.out, overrides, args.storage_options)  # noqa: E731
    out = OutputLayout(args.out, args.storage_options)
    stats = (
        work()
        if args.verbose
        else quietly(work, out, "relabel", f"relabeling {args.output} -> {args.out} (variant {args.variant}, no LLM)")
    )
    print(summary(stats, args.out))
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from arhn_ray.agreement import agreement, decision_agreement, is_output, render

    if is_output(args.reference, args.storage_options):
        result = decision_agreement(args.output, args.reference, args.storage_options)
    else:
        result = agreement(args.output, args.reference, stage2=args.stage2_reference, positive_actions=args.count_as,
                           storage_options=args.storage_options)  # fmt: skip
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _review(args: argparse.Namespace) -> int:
    from arhn_ray.review import write_review
    from arhn_ray.saved import saved_config

    out = OutputLayout(args.output, args.storage_options)
    written = write_review(out, saved_config(out), args.sample, args.seed, args.subset or None)
    print(f"arhn-ray: wrote {written.path}\n  {written.queries} queries, {written.negatives} negatives, "
          f"{written.bytes / 1e6:.1f} MB in {written.seconds:.1f} s; open it in a browser, mark negatives, download the verdicts,\n"
          f"  then: arhn-ray agreement {args.output} --reference verdicts.jsonl")  # fmt: skip
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from arhn_ray.evaluate.beir import BeirError
    from arhn_ray.evaluate.report import render_markdown
    from arhn_ray.evaluate.run import evaluate

    out = OutputLayout(args.output, args.storage_options)
    work = lambda: evaluate(args.output, args.eval, args.overrides, baseline=args.baseline, storage_options=args.storage_options)  # noqa: E731
    try:
        result = work() if args.verbose else quietly(work, out, "evaluate", f"evaluating {args.output} on {', '.join(args.eval)}")
    except BeirError as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    print(render_markdown(result))
    print(f"wrote {args.output.rstrip('/')}/evaluate/evaluate.json, evaluate.md, evaluate.png and the card's section")
    return 0


def _export(args: argparse.Namespace) -> int:
    from arhn_ray.data.export import export, file_type

    try:
        kind = file_type(args.out)
        written = export(args.output, args.format, args.out, negatives=args.negatives, seed=args.seed, prefixes=args.e5_prefixes, short=args.short,
                   storage_options=args.storage_options)  # fmt: skip
    except ValueError as e:  # a bad --out, --format or --short: named, no traceback
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    print(
        f"arhn-ray: wrote {written.rows} training rows ({args.format}) to {args.out} as {kind}, "
        f"from {written.queries - sum(written.dropped.values())} of {written.queries} queries"
    )
    if written.dropped:
        print(
            f"  left out     {counts(written.dropped)}"
            + (
                "; --short keep writes the queries with fewer negatives"
                if args.short != "keep" and args.format != "sentence-transformers"
                else ""
            )
        )
    return 0


def _command(sub, name: str, help: str, example: str, fn) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.set_defaults(fn=fn)
    return p


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", type=json.loads, default={}, metavar="JSON",
                   help='fsspec options for an s3:// output (and the input it names), e.g. \'{"client_kwargs": {"endpoint_url": "..."}}\'; '
                   "credentials are best left to the environment")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arhn-ray",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (local Ray, vLLM on CPU, the bundled model, the shipped sample):\n  arhn-ray refine conf/local.yaml\n\n"
        "each command has its own help: arhn-ray refine --help",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show Ray's and vLLM's logs on the terminal")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = _command(sub, "refine", "refine a dataset with the two LLM stages and write refined and rejected rows",
                 "arhn-ray refine conf/local.yaml input.path=data/ output.path=out/run1 engine.replicas=2", _refine)  # fmt: skip
    r.add_argument("config", help="a YAML file from conf/")
    r.add_argument("overrides", nargs="*", default=[], help="key=value, e.g. engine.replicas=8 (optional)")

    pl = _command(sub, "plan", "what a run would do and cost (files, parts, rows, LLM calls, tokens, GPU-hours), calling no LLM",
                  "arhn-ray plan conf/qwen3-32b-a100x16.yaml input.path=arhn_ray/samples", _plan)  # fmt: skip
    pl.add_argument("config", help="a YAML file from conf/")
    pl.add_argument("overrides", nargs="*", default=[], help="key=value, as for refine (optional)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON, for scripts")
    assumed = Assumptions()
    pl.add_argument(
        "--sample-rows", type=int, default=assumed.sample_rows, help="rows read per file; the rest of a file is scaled from them"
    )
    pl.add_argument(
        "--prefill-tokens-per-gpu-s",
        type=float,
        default=assumed.prefill_tokens_per_gpu_s,
        help="assumed prompt tokens per GPU-second",
    )
    pl.add_argument(
        "--decode-tokens-per-gpu-s",
        type=float,
        default=assumed.decode_tokens_per_gpu_s,
        help="assumed output tokens per GPU-second",
    )
    pl.add_argument("--train-queries-per-gpu-s", type=float, default=assumed.train_queries_per_gpu_s,
                    help="assumed training queries per GPU-second for evaluate's arms")  # fmt: skip

    st = _command(sub, "stage", "download every model and tokenizer a config loads into the Hugging Face cache (HF_HOME), "
                  "so that pods can run with HF_HUB_OFFLINE=1", "HF_HOME=/models/huggingface arhn-ray stage conf/qwen3-32b-a100x16.yaml", _stage)  # fmt: skip
    st.add_argument("config", help="a YAML file from conf/")
    st.add_argument("overrides", nargs="*", default=[], help="key=value, as for refine (optional)")
    st.add_argument(
        "--list", action="store_true", help="print what it would download (repository, config key, kind), download nothing"
    )

    m = _command(sub, "prepare-model", "convert the bundled SmolLM2 GGUF file into a Hugging Face folder (once)",
                 "arhn-ray prepare-model", _prepare_model)  # fmt: skip
    m.add_argument("--target", default=None, help="folder to write (default: the cache)")

    s = _command(sub, "stats", "render report.md and report.png of an output folder again", "arhn-ray stats out/local", _stats)
    s.add_argument("output")
    _storage_options(s)

    rl = _command(sub, "relabel", "recompute the labels from the LLM outputs stored in an output folder, with no LLM",
                  "arhn-ray relabel out/local --variant filter --out out/local-filter", _relabel)  # fmt: skip
    rl.add_argument("output")
    rl.add_argument("--variant", choices=VARIANTS, required=True)
    rl.add_argument("--positive-no-answer", choices=POSITIVE_NO_ANSWER, default=None)
    rl.add_argument("--max-relabeled", type=int, default=None)
    rl.add_argument("--out", required=True)
    _storage_options(rl)

    a = _command(sub, "agreement", "Cohen's kappa of an output's labels against reference judgments",
                 "arhn-ray agreement out/local --reference rlhn_stage_1.jsonl --stage2-reference rlhn_stage_2.jsonl", _agreement)  # fmt: skip
    a.add_argument("output")
    a.add_argument(
        "--reference", required=True, help="JSONL/CSV {query_id, docid, label}, an RLHN verdict JSONL, or another output folder"
    )
    a.add_argument("--stage2-reference", default=None, help="RLHN stage-2 verdicts; they decide the queries they hold")
    a.add_argument(
        "--count-as",
        choices=sorted(COUNT_AS),
        default="relabel",
        help="which ARHN actions count as 'false negative'",
    )
    a.add_argument("--json", default=None, help="also write the result here")
    _storage_options(a)

    rv = _command(sub, "review", "write review.html: a sample of the labels to look at in a browser and judge",
                  "arhn-ray review out/local --sample 100 --subset msmarco_passage", _review)  # fmt: skip
    rv.add_argument("output")
    rv.add_argument("--sample", type=int, default=200, help="queries shown, drawn evenly from each decision and subset")
    rv.add_argument("--seed", type=int, default=0)
    rv.add_argument("--subset", action="append", help="only these subsets (repeatable)")
    _storage_options(rv)

    ev = _command(sub, "evaluate", "train the same retriever on the original, the refined and the TopK-PercPos rows and score each on a "
                  "BEIR-format set, with paired bootstrap intervals", "arhn-ray evaluate out/local --eval arhn_ray/evaluate/msmarco_beir", _evaluate)  # fmt: skip
    ev.add_argument("output")
    ev.add_argument(
        "--eval",
        required=True,
        nargs="+",
        metavar="DIR",
        help="BEIR-format folders (corpus.jsonl, queries.jsonl, qrels/test.tsv), named by BEIR's names: one or the paper's 16; "
        "or sets on the Hub, hf://datasets/BeIR/NAME (judgments from BeIR/NAME-qrels), fetched once into the cache",
    )
    ev.add_argument(
        "--baseline", default=None, help="a TopK-PercPos output of the same input (else it is run now, into OUTPUT/evaluate/)"
    )
    ev.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value under evaluate (model, batch_size, lr, epochs, negatives, seed, workers, use_gpu, ...)",
    )
    _storage_options(ev)

    e = _command(sub, "export", "write training files from an output folder",
                 "arhn-ray export out/local --format sentence-transformers --negatives 7 --out train.parquet", _export)  # fmt: skip
    e.add_argument("output")
    e.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    e.add_argument("--negatives", type=int, default=7)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--e5-prefixes", action="store_true", help="prefix 'query: ' and 'passage: ' (E5)")
    e.add_argument("--short", choices=SHORT_POLICIES, default="repeat", help="rows with fewer negatives than asked")
    e.add_argument("--out", required=True)
    _storage_options(e)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # key=value overrides may also follow the options (`evaluate OUT --eval DIR key=value`)
    if extra and (not hasattr(args, "overrides") or not all("=" in e and not e.startswith("-") for e in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if isinstance(getattr(args, "eval", None), list):  # --eval DIR [DIR ...] key=value: the overrides follow the folders
        args.overrides = [*args.overrides, *(e for e in args.eval if "=" in e)]
        args.eval = [e for e in args.eval if "=" not in e]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError) as e:  # a missing input, repository or revision; a refused token
        print(f"arhn-ray: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
