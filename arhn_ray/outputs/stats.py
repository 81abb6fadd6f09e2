"""What a run did: counts per subset and overall (the paper's Table 4), as JSON, Markdown and a picture."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from arhn_ray import bundled
from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.method.labeling import NOT_JUDGED, SCREENED

COUNTERS = (
    "queries",
    "rejected",
    "negatives_in",
    "relabel",
    "filter",
    "keep",
    "unjudged",  # past method.negatives_per_query: no LLM judged them, so they are not in the refined row
    "screened",  # kept without a Stage 1 call: below the teacher screen's top k
    "no_answer",
    "positive_no_answer",
    "positive_ungrounded",  # anchor snippets not found in their passage, ranked as the model wrote them
    "judged",  # negatives an LLM read (Stage 1): no_answer_rate is of these
    "stage1_calls",
    "stage2_calls",
    "stage2_skipped",
    "stage1_prompt_tokens",
    "stage1_output_tokens",
    "stage2_prompt_tokens",
    "stage2_output_tokens",
    # calls cut by max_tokens (finish reason "length"): a model repeating itself, or a budget too small
    "stage1_cut",
    "stage2_cut",
)


class RunStats:
    """Mergeable counters; ``add_*`` per output row, ``merge`` across shards."""

    def __init__(self) -> None:
        self.subsets: dict[str, Counter] = defaultdict(Counter)
        self.reasons: dict[str, Counter] = defaultdict(Counter)
        self.grounding: dict[str, Counter] = defaultdict(Counter)
        self.stage2_status: dict[str, Counter] = defaultdict(Counter)
        self.rejected_reasons: Counter = Counter()
        self.timing: Counter = Counter()  # engine_s (replicas' time refining, summed), engine_start_s
        self.meta: dict[str, Any] = {}

    def add_refined(self, row: dict) -> None:
        s = row.get("subset") or "default"
        c = self.subsets[s]
        c["queries"] += 1
        decisions = row.get("decisions") or []
        c["negatives_in"] += len(decisions)
        for d in decisions:
            c[d["action"]] += 1
            self.reasons[s][f"{d['action']}:{d['reason']}"] += 1
            if d["reason"] == SCREENED:
                c["screened"] += 1
            if d["reason"] in NOT_JUDGED:  # no LLM read these: no answer to count
                continue
            c["judged"] += 1
            self.grounding[s][d["grounding"] or "no_answer"] += 1
            if d["snippet"] is None:
                c["no_answer"] += 1
        if decisions and row.get("positive_snippet") is None:
            c["positive_no_answer"] += 1
        if decisions and row.get("positive_grounding") == "ungrounded" and row.get("positive_snippet") is not None:
            c["positive_ungrounded"] += 1
        self._add_llm(s, row.get("llm") or [])

    def _add_llm(self, s: str, calls: list[dict]) -> None:
        c = self.subsets[s]
        for call in calls:
            c["stage1_calls"] += 1
            c["stage1_prompt_tokens"] += call.get("stage1_prompt_tokens") or 0
            c["stage1_output_tokens"] += call.get("stage1_output_tokens") or 0
            c["stage1_cut"] += call.get("stage1_finish_reason") == "length"
            if call.get("stage2_text") is None:
                c["stage2_skipped"] += 1
            else:
                c["stage2_calls"] += 1
                c["stage2_prompt_tokens"] += call.get("stage2_prompt_tokens") or 0
                c["stage2_output_tokens"] += call.get("stage2_output_tokens") or 0
                c["stage2_cut"] += call.get("stage2_finish_reason") == "length"
                self.stage2_status[s][call.get("stage2_status") or "unknown"] += 1

    def add_timing(self, engine_s: float, start_s: float, preemptions: int | None = None) -> None:
        """Replica time spent refining (summed over replicas) and starting engines, in seconds; vLLM's
        preemptions where the engine exposes them."""
        self.timing["engine_s"] += engine_s
        self.timing["engine_start_s"] += start_s
        if preemptions is not None:
            self.timing["preemptions"] += preemptions

    def add_rejected(self, subset: str | None, reason: str) -> None:
        self.subsets[subset or "default"]["rejected"] += 1
        self.rejected_reasons[reason.split(":")[0]] += 1

    def merge(self, other: RunStats) -> None:
        for mine, theirs in (
            (self.subsets, other.subsets),
            (self.reasons, other.reasons),
            (self.grounding, other.grounding),
            (self.stage2_status, other.stage2_status),
        ):
            for k, v in theirs.items():
                mine[k].update(v)
        self.rejected_reasons.update(other.rejected_reasons)
        self.timing.update(other.timing)

    def overall(self) -> Counter:
        total: Counter = Counter()
        for c in self.subsets.values():
            total.update(c)
        return total

    def to_dict(self) -> dict[str, Any]:
        subsets = {s: _summary(c) for s, c in sorted(self.subsets.items())}
        total = self.overall()
        merged = lambda d: dict(sum((Counter(v) for v in d.values()), Counter()))  # noqa: E731
        return {
            "overall": _summary(total),
            "subsets": subsets,
            "decision_reasons": merged(self.reasons),
            "grounding": merged(self.grounding),
            "stage2_status": merged(self.stage2_status),
            "rejected_reasons": dict(self.rejected_reasons),
            "replica_time": {k: round(self.timing[k], 4) for k in ("engine_s", "engine_start_s")},
            **({"preemptions": int(self.timing["preemptions"])} if "preemptions" in self.timing else {}),
            "raw": {
                "subsets": {k: dict(v) for k, v in self.subsets.items()},
                "reasons": {k: dict(v) for k, v in self.reasons.items()},
                "grounding": {k: dict(v) for k, v in self.grounding.items()},
                "stage2_status": {k: dict(v) for k, v in self.stage2_status.items()},
            },
            **self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        st = cls()
        raw = data.get("raw", {})
        for name in ("subsets", "reasons", "grounding", "stage2_status"):
            for k, v in raw.get(name, {}).items():
                getattr(st, name)[k].update(v)
        st.rejected_reasons.update(data.get("rejected_reasons", {}))
        st.timing.update(data.get("replica_time", {}))
        if "preemptions" in data:
            st.timing["preemptions"] += data["preemptions"]
        return st


def _summary(c: Counter) -> dict[str, Any]:
    out = {k: c.get(k, 0) for k in COUNTERS}
    q = max(c.get("queries", 0), 1)
    out["per_query"] = {k: round(c.get(k, 0) / q, 3) for k in ("negatives_in", "relabel", "filter", "keep")}
    n = max(c.get("judged", 0), 1)
    out["no_answer_rate"] = round(c.get("no_answer", 0) / n, 4)
    return out


def render_files(stats: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.png`` written into a local folder."""
    out = Path(out_dir)
    md, png = out / layout.REPORT_MD, out / layout.REPORT_PNG
    md.write_text(table4_markdown(stats), encoding="utf-8")
    render_png(stats, png)
    return md, png


def to_json(stats: dict[str, Any]) -> str:
    return json.dumps(stats, indent=2)


def table4_markdown(stats: dict[str, Any]) -> str:
    lines = ["# ARHN refinement report", ""]
    if stats.get("model"):
        lines += [f"Model: `{stats['model']}`, variant `{stats.get('variant')}`, prompts `{stats.get('prompt_version')}`.", ""]
    lines += [
        "| subset | queries | rejected | negatives in | relabeled / query | filtered / query | kept / query | NO_ANSWER rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in [*stats["subsets"].items(), ("**overall**", stats["overall"])]:
        pq = s["per_query"]
        lines.append(
            f"| {name} | {s['queries']} | {s['rejected']} | {s['negatives_in']} | {pq['relabel']} | {pq['filter']} | {pq['keep']} | {s['no_answer_rate']:.1%} |"
        )
    lines += [
        "",
        "A subset is the rows' `subset` field (the paper's Table 4 groups by it; `default` when a row has none), "
        "not the input file: `refined/<file>/` holds each file's rows.",
    ]
    o = stats["overall"]
    lines += [
        "",
        f"Totals: {o['relabel']} relabeled, {o['filter']} filtered, {o['keep']} kept{unjudged_words(o)}.",
        "",
        "| tokens | prompt | output | calls | cut by max_tokens |",
        "|---|---:|---:|---:|---:|",
        f"| Stage 1 | {o['stage1_prompt_tokens']} | {o['stage1_output_tokens']} | {o['stage1_calls']} | {o.get('stage1_cut', 0)} |",
        f"| Stage 2 | {o['stage2_prompt_tokens']} | {o['stage2_output_tokens']} | {o['stage2_calls']} (skipped {o['stage2_skipped']}) "
        f"| {o.get('stage2_cut', 0)} |",
        "",
    ]
    for title, key in (
        ("Grounding", "grounding"),
        ("Stage 2 parse", "stage2_status"),
        ("Decision reasons", "decision_reasons"),
        ("Rejected rows", "rejected_reasons"),
    ):
        lines.append(f"**{title}:** " + (", ".join(f"{k} {v}" for k, v in sorted(stats[key].items())) or "none"))
        lines.append("")
    if "throughput" in stats:
        t = stats["throughput"]
        rt = stats.get("replica_time", {})
        lines.append(
            f"**Throughput:** {t.get('queries_per_s', 0):.3f} queries/s over {t.get('wall_s', 0):.1f} s wall time; "
            f"replicas spent {rt.get('engine_s', 0):.1f} s refining and {rt.get('engine_start_s', 0):.1f} s starting engines."
        )
        lines.append("")
    return "\n".join(lines)


def unjudged_words(o: dict[str, Any]) -> str:
    """What no LLM judged, as the summary, the report and the card say it ('' when nothing)."""
    words = ""
    if o.get("screened"):
        words += f" ({o['screened']} of them screened: kept below the teacher's top k, no Stage 1 call)"
    if o.get("unjudged"):
        words += f"; {o['unjudged']} past the first N negatives a query not judged and not kept"
    return words


def demo_labels(stats: dict[str, Any]) -> str | None:
    """The warning a run of the bundled model carries, or None for a real model (an endpoint, recorded
    outputs or a teacher made the labels: the bundled model did not)."""
    model = stats.get("model") or ""
    if not bundled.is_bundled(model) or stats.get("method", "arhn") != "arhn" or stats.get("engine", "vllm") != "vllm":
        return None
    o = stats["overall"]
    return (
        f"These labels come from the bundled {bundled.short_name(model)} model (135M parameters), far too small to judge "
        f"answers: it filtered {o['filter']} of {o['negatives_in']} negatives. They show the pipeline working and are "
        "NOT fit for training. Refine with Qwen3-32B (conf/qwen3-32b-a100x16.yaml) for training data."
    )


def render_png(stats: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = list(stats["subsets"].items()) + [("overall", stats["overall"])]
    names = [n for n, _ in subsets]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    bottom = [0.0] * len(names)
    for action, color in (("relabel", "#2a9d8f"), ("filter", "#e9c46a"), ("keep", "#8d99ae")):
        vals = [s["per_query"][action] for _, s in subsets]
        ax.bar(names, vals, bottom=bottom, label=action, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("Negatives per query (Table 4)")
    ax.set_ylabel("negatives / query")
    ax.set_xlabel("subset (the rows' subset field)")
    ax.legend()
    ax.tick_params(axis="x", rotation=20)
    for ax, key, title in ((axes[1], "grounding", "Snippet grounding"), (axes[2], "stage2_status", "Stage 2 parse")):
        items = sorted(stats[key].items())
        ax.barh([k for k, _ in items] or ["none"], [v for _, v in items] or [0], color="#457b9d")
        ax.set_title(title)
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v}", va="center")
    o = stats["overall"]
    fig.suptitle(
        f"ARHN: {o['queries']} queries refined, {o['rejected']} rejected; "
        f"{o['relabel']} relabeled, {o['filter']} filtered, {o['keep']} kept"
    )
    demo = demo_labels(stats)
    fig.tight_layout(**({"rect": (0, 0.07, 1, 1)} if demo else {}))
    if demo:
        fig.text(
            0.5,
            0.015,
            f"NOT FIT FOR TRAINING: labels from the bundled {bundled.short_name(stats['model'])} model (135M), "
            "which shows the pipeline working; refine with Qwen3-32B for training data",
            ha="center",
            color="#b00020",
            fontsize=11,
        )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_stats(out: OutputLayout) -> dict[str, Any]:
    """``stats.json`` of an output folder."""
    return json.loads(out.read_text(layout.STATS))
