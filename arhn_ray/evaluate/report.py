"""``evaluate``'s table, picture and card section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arhn_ray.data.layout import OutputLayout

CARD_MARK = "## Retrieval evaluation"


def render_markdown(r: dict[str, Any]) -> str:
    e = r["eval"]
    lines = [CARD_MARK, "",
             f"The same retriever (`{r['train']['hyperparameters']['model']}`) trained per arm with identical "
             f"hyperparameters and seed; {e['queries']} queries over {e['corpus']} passages ({e['folder']}); {e['metrics']}.", "",
             "| arm | training examples (batch) | steps | training loss | nDCG@10 (95% CI) | Recall@100 |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for arm, m in r["arms"].items():
        t = r["train"]["arms"].get(arm, {})
        if m.get("trained") is False:
            lines.append(f"| {arm} | 0 | - | - | not trained: no row kept a positive and a negative | - |")
            continue
        trained = f"{t['examples']} ({t['batch_size']})" if t.get("batch_size") else str(t.get("examples", "-"))
        lines.append(f"| {arm} | {trained} | {t.get('steps', '-')} | {t.get('train_loss', '-')} | "
                     f"{m['ndcg@10']:.4f} ({m['ndcg@10_ci95'][0]:.4f} to {m['ndcg@10_ci95'][1]:.4f}) | {m['recall@100']:.4f} |")  # fmt: skip
    lines.append("")
    for name, p in r["paired"].items():
        if "skipped" in p:
            lines.append(f"- nDCG@10 {name.replace('_vs_', ' - ')}: not computed, {p['skipped']}")
            continue
        verdict = "inconclusive (the interval holds 0)" if p["inconclusive"] else ("better" if p["delta"] > 0 else "worse")
        lines.append(f"- nDCG@10 {name.replace('_vs_', ' - ')}: {p['delta']:+.4f}, 95% CI [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] "
                     f"over {p['queries']} queries: {verdict}")  # fmt: skip
    lines += ["", f"With {e['queries']} evaluation queries this set resolves nDCG@10 differences of about ±{e['detectable_ndcg@10_difference']:.3f} "
              "(1.96 x sqrt(2) x the per-query spread of zero-shot nDCG@10 / sqrt(queries)); "
              "a small run checks the loop, not the method (the paper's +1.3 nDCG@10 needs its training sizes).", ""]  # fmt: skip
    return "\n".join(lines)


def render_png(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a, m in r["arms"].items() if m.get("trained") is not False]
    values = [r["arms"][a]["ndcg@10"] for a in arms]
    errors = [[v - r["arms"][a]["ndcg@10_ci95"][0] for a, v in zip(arms, values)], [r["arms"][a]["ndcg@10_ci95"][1] - v for a, v in zip(arms, values)]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(arms, values, yerr=errors, capsize=6, color=["#999999", "#4c72b0", "#55a868", "#c44e52"][: len(arms)])
    ax.set_ylabel("nDCG@10 (95% CI)")
    ax.set_title(f"Retriever per arm on {r['eval']['queries']} queries")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_card_section(out: OutputLayout, section: str) -> None:
    """The card's evaluation section, replaced if an earlier evaluate wrote one."""
    card = out.read_text("README.md") if out.exists("README.md") else ""
    if CARD_MARK in card:
        card = card[: card.index(CARD_MARK)].rstrip() + "\n"
    out.write_text("README.md", card.rstrip() + "\n\n" + section)
