"""The ``arhn-ray`` command line: each command's arguments, help and example, in one place."""

from __future__ import annotations

import argparse
import json

import arhn_ray.cli.commands as c
from arhn_ray.data.export import EXAMPLE_RULES, SHORT_POLICIES
from arhn_ray.data.export import FORMATS as EXPORT_FORMATS
from arhn_ray.method.options import POSITIVE_NO_ANSWER, VARIANTS
from arhn_ray.outputs.agreement import COUNT_AS
from arhn_ray.plan import Assumptions

ABOUT = """arhn-ray: clean hard-negative training data for dense retrievers with ARHN.

An LLM copies an answer snippet (or NO_ANSWER) out of each passage of a query, then ranks the
snippets with the positive's first; negatives ranked above the positive are relabeled as
positives, those below it that carry a snippet are filtered out, the rest are kept.
"""


def _command(sub, name: str, help: str, example: str, fn) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.set_defaults(fn=fn)
    return p


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", type=json.loads, default={}, metavar="JSON",
                   help='fsspec options for an s3:// output (and the input it names), e.g. \'{"client_kwargs": {"endpoint_url": "..."}}\'; '
                   "credentials are best left to the environment")  # fmt: skip


def _refine(sub) -> None:
    r = _command(sub, "refine", "refine a dataset with the two LLM stages and write refined and rejected rows",
                 "arhn-ray refine conf/local.yaml input.path=data/ output.path=out/run1 engine.replicas=2", c.refine)  # fmt: skip
    r.add_argument("config", help="a YAML file from conf/")
    r.add_argument("overrides", nargs="*", default=[], help="key=value, e.g. engine.replicas=8 (optional)")


def _plan(sub) -> None:
    pl = _command(sub, "plan", "what a run would do and cost (files, parts, rows, LLM calls, tokens, GPU-hours), calling no LLM",
                  "arhn-ray plan conf/qwen3-32b-a100x16.yaml input.path=arhn_ray/samples", c.plan)  # fmt: skip
    pl.add_argument("config", help="a YAML file from conf/")
    pl.add_argument("overrides", nargs="*", default=[], help="key=value, as for refine (optional)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON, for scripts")
    assumed = Assumptions()
    pl.add_argument(
        "--sample-rows", type=int, default=assumed.sample_rows, help="rows read per file; the rest of a file is scaled from them"
    )
    rates = assumed.rates
    pl.add_argument("--fraction-of-peak", type=float, default=rates.fraction_of_peak,
                    help=f"assumed share of the GPU's dense peak ({rates.peak_tflops:g} TFLOP/s) a step reaches")  # fmt: skip
    pl.add_argument("--fraction-of-bandwidth", type=float, default=rates.fraction_of_bandwidth,
                    help=f"assumed share of the GPU's HBM bandwidth ({rates.hbm_tb_s:g} TB/s) a KV read reaches")  # fmt: skip
    pl.add_argument("--teacher-pairs-per-gpu-s", type=float, default=assumed.teacher_pairs_per_gpu_s,
                    help="assumed (query, passage) pairs a teacher scores per GPU-second (screen, TopK-PercPos)")  # fmt: skip
    pl.add_argument("--train-queries-per-gpu-s", type=float, default=assumed.train_queries_per_gpu_s,
                    help="assumed training queries per GPU-second for evaluate's arms")  # fmt: skip


def _stage(sub) -> None:
    st = _command(sub, "stage", "download every model and tokenizer a config loads into the Hugging Face cache (HF_HOME), "
                  "so that pods can run with HF_HUB_OFFLINE=1", "HF_HOME=/models/huggingface arhn-ray stage conf/qwen3-32b-a100x16.yaml", c.stage)  # fmt: skip
    st.add_argument("config", help="a YAML file from conf/")
    st.add_argument("overrides", nargs="*", default=[], help="key=value, as for refine (optional)")
    st.add_argument(
        "--list", action="store_true", help="print what it would download (repository, config key, kind), download nothing"
    )


def _prepare_model(sub) -> None:
    m = _command(sub, "prepare-model", "convert the bundled SmolLM2 GGUF file into a Hugging Face folder (once)",
                 "arhn-ray prepare-model", c.prepare_model)  # fmt: skip
    m.add_argument("--target", default=None, help="folder to write (default: the cache)")


def _stats(sub) -> None:
    s = _command(sub, "stats", "render report.md and report.png of an output folder again", "arhn-ray stats out/local", c.stats)
    s.add_argument("output")
    _storage_options(s)


def _relabel(sub) -> None:
    rl = _command(sub, "relabel", "recompute the labels from the LLM outputs stored in an output folder, with no LLM",
                  "arhn-ray relabel out/local --variant filter --out out/local-filter", c.relabel)  # fmt: skip
    rl.add_argument("output")
    rl.add_argument("--variant", choices=VARIANTS, required=True)
    rl.add_argument("--positive-no-answer", choices=POSITIVE_NO_ANSWER, default=None)
    rl.add_argument("--max-relabeled", type=int, default=None)
    rl.add_argument("--out", required=True)
    _storage_options(rl)


def _agreement(sub) -> None:
    a = _command(sub, "agreement", "Cohen's kappa of an output's labels against reference judgments",
                 "arhn-ray agreement out/local --reference rlhn_stage_1.jsonl --stage2-reference rlhn_stage_2.jsonl", c.agreement)  # fmt: skip
    a.add_argument("output")
    a.add_argument(
        "--reference",
        required=True,
        help="JSONL/CSV {query_id, docid, label}, an RLHN verdict JSONL, another output folder, or a "
        "refined dataset in Tevatron/RLHN rows (parquet or JSONL, local, s3:// or hf://, e.g. hf://datasets/rlhn/rlhn-680K@<commit>)",
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


def _review(sub) -> None:
    rv = _command(sub, "review", "write review.html: a sample of the labels to look at in a browser and judge",
                  "arhn-ray review out/local --sample 100 --subset msmarco_passage", c.review)  # fmt: skip
    rv.add_argument("output")
    rv.add_argument("--sample", type=int, default=200, help="queries shown, drawn evenly from each decision and subset")
    rv.add_argument("--seed", type=int, default=0)
    rv.add_argument("--subset", action="append", help="only these subsets (repeatable)")
    _storage_options(rv)


def _evaluate(sub) -> None:
    ev = _command(sub, "evaluate", "train the same retriever on the original, the refined and the TopK-PercPos rows and score each on a "
                  "BEIR-format set, with paired bootstrap intervals", "arhn-ray evaluate out/local --eval arhn_ray/evaluate/msmarco_beir", c.evaluate)  # fmt: skip
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
    ev.add_argument("--arm", action="append", default=[], metavar="NAME=PATH",
                    help="another refined dataset as an arm of its own (repeatable), in any format refine reads, local, s3:// or "
                    "hf://datasets/rlhn/rlhn-680K@<commit>: restricted to OUTPUT's queries, trained as the others, compared with "
                    "the original arm")  # fmt: skip
    ev.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value under evaluate (model, batch_size, lr, epochs, negatives, seed, workers, use_gpu, ...)",
    )
    _storage_options(ev)


def _calibrate(sub) -> None:
    ca = _command(sub, "calibrate", "read a calibration run (screen.model set, screen.top_k=null) and print, for each k, what a teacher "
                  "screen of top k would save and how far its labels would move (kappa, recalls)",
                  "arhn-ray calibrate out/calib", c.calibrate)  # fmt: skip
    ca.add_argument("output")
    ca.add_argument("--kappa", type=float, default=0.9, help="the agreement with the full labels a k must reach (default 0.9)")
    ca.add_argument("--json", action="store_true", help="print the sweep as JSON")
    _storage_options(ca)


def _export(sub) -> None:
    e = _command(sub, "export", "write training files from an output folder",
                 "arhn-ray export out/local --format sentence-transformers --negatives 7 --out train.parquet", c.export)  # fmt: skip
    e.add_argument("output")
    e.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    e.add_argument("--negatives", type=int, default=7)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--e5-prefixes", action="store_true", help="prefix 'query: ' and 'passage: ' (E5)")
    e.add_argument("--short", choices=SHORT_POLICIES, default="repeat", help="rows with fewer negatives than asked")
    e.add_argument("--examples", choices=EXAMPLE_RULES, default="per-query",
                   help="sentence-transformers rows: one a query, its positive drawn among the query's (the paper's protocol, what evaluate "
                   "trains), or one a positive (a query ARHN gave three positives trains three times)")  # fmt: skip
    e.add_argument("--out", required=True)
    _storage_options(e)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arhn-ray",
        description=ABOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (local Ray, vLLM on CPU, the bundled model, the shipped sample):\n  arhn-ray refine conf/local.yaml\n\n"
        "each command has its own help: arhn-ray refine --help",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show Ray's and vLLM's logs on the terminal")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_refine, _plan, _stage, _prepare_model, _stats, _relabel, _agreement, _calibrate, _review, _evaluate, _export):
        add(sub)
    return p
