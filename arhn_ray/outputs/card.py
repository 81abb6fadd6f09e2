"""The output folder as a dataset people load: its card (``README.md``), in Hugging Face's format.

Says what ran (model, prompts, variant, config), what it did (the statistics table), how to
load it, and, when the bundled 135M model labeled it, that the labels show the pipeline
working and are not fit for training.
"""

from __future__ import annotations

from typing import Any

from arhn_ray.data.layout import KINDS, data_files
from arhn_ray.outputs.stats import demo_labels, table4_markdown, unjudged_words


def render_card(stats: dict[str, Any]) -> str:
    o = stats["overall"]
    warning = demo_labels(stats)
    lines = [
        "---",
        "configs:",
        *(line for kind in KINDS for line in (f"- config_name: {kind}", f"  data_files: {data_files(kind)}")),
        "tags: [retrieval, hard-negatives, arhn]",
        "---",
        "",
        "# Refined hard negatives (ARHN)",
        "",
    ]
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    lines += [
        f"{o['queries']} queries refined with ARHN (Answer-centric Relabeling of Hard Negatives), {o['rejected']} rejected: "
        f"of {o['negatives_in']} hard negatives, {o['relabel']} were relabeled as positives (false negatives), "
        f"{o['filter']} filtered out (they carry an answer but rank below the positive) and {o['keep']} kept"
        f"{unjudged_words(o)}.",
        "",
        "## How to load it",
        "",
        "```python",
        "from datasets import load_dataset",
        f'refined = load_dataset("parquet", data_files="{data_files("refined")}", split="train")',
        "```",
        "",
        "`positive_passages` and `negative_passages` are refined (a drop-in for training); `decisions` holds one entry",
        "per input negative (action, reason, snippet, grounding, rank); `llm` the raw LLM outputs, so that",
        "`arhn-ray relabel` can recompute labels under another variant. `arhn-ray export` writes",
        "sentence-transformers, FlagEmbedding and Tevatron training files.",
        "",
        "## Provenance",
        "",
        "| | |",
        "|---|---|",
    ]
    if stats.get("labels_from"):
        lines.insert(lines.index("| | |") + 2, f"| labels from | {stats['labels_from']} |")
    for key in ("model", "engine", "variant", "prompt_version", "prompt_sha256", "negatives_per_query", "screen", "config_digest",
                "pipeline_mode"):  # fmt: skip
        lines.append(f"| {key} | `{stats.get(key)}` |")
    if stats.get("input_revision"):  # an hf:// input: the commit every part was read at
        lines.append(f"| input | `{stats['input']}` (commit `{stats['input_revision']}`) |")
    lines += ["", "The resolved configuration is `config.yaml`; secrets are left out.", "", "## Statistics", ""]
    body = table4_markdown(stats).split("\n", 2)[-1]  # without the report's own title
    lines.append(body)
    return "\n".join(lines)
