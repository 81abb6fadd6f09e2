"""``evaluate``'s table (laid out as the paper's Table 1: a row per BEIR set, then the averages),
picture and card section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout

CARD_MARK = "## Retrieval evaluation"
ARMS = (
    "zero_shot",
    "original",
    "topk_percpos",
    "refined",
)  # Table 1's order: No Refinement, TopK-PercPos, ARHN; extra arms after


def arms_of(r: dict[str, Any]) -> list[str]:
    """The table's columns: the built-in arms in Table 1's order, then any ``--arm`` in the order given."""
    return [*ARMS, *(a for a in r.get("arms", {}) if a not in ARMS)]


AVERAGES = {"all": "Avg. {n} (All)", "ood": "Avg. {n} (OOD)"}


def _cell(m: dict[str, Any] | None) -> str:
    if not m or m.get("trained") is False:
        return "-"
    return f"{m['ndcg@10']:.4f}" + (f" ±{m['ndcg@10_seed_sd']:.4f}" if "ndcg@10_seed_sd" in m else "")


def _paired(name: str, p: dict[str, Any]) -> str:
    if "skipped" in p:
        return f"{name.replace('_vs_', ' - ')}: not computed, {p['skipped']}"
    verdict = "inconclusive (the interval holds 0)" if p["inconclusive"] else ("better" if p["delta"] > 0 else "worse")
    return f"{name.replace('_vs_', ' - ')}: {p['delta']:+.4f}, 95% CI [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] over {p['queries']} queries: {verdict}"


def table1_markdown(r: dict[str, Any]) -> str:
    train, hp = r["train"], r["train"]["hyperparameters"]
    arms = arms_of(r)
    seeds = hp.get("seeds") or [hp.get("seed", 0)]
    lines = [CARD_MARK, "",
             f"The same retriever (`{hp['model']}`) trained per arm with identical hyperparameters on the same "
             f"{train.get('queries', '')} queries: one instance a query an epoch ({hp['negatives']} negatives), {hp['epochs']} epoch(s), "
             f"global batch {hp['batch_size']} over {hp['workers']} worker(s), seed(s) {', '.join(map(str, seeds))}"
             f"{' (mean ± standard deviation over seeds)' if len(seeds) > 1 else ''}; {r['eval']['metrics']}; {r['eval']['search']}.", "",
             "nDCG@10 (sets marked * are the paper's out-of-domain ones):", "",
             "| BEIR set | queries | passages | " + " | ".join(arms) + " |", "|---|---:|---:|" + "---:|" * len(arms)]  # fmt: skip
    for name, s in r["sets"].items():
        lines.append(
            f"| {name}{'*' if s['ood'] else ''} | {s['queries']} | {s['corpus']} | "
            + " | ".join(_cell(s["arms"].get(a)) for a in arms)
            + " |"
        )
    if len(r["sets"]) > 1:
        for group, avg in r["average"].items():
            label = AVERAGES[group].format(n=len(avg["sets"]))
            lines.append(f"| **{label}** | | | " + " | ".join(_cell(avg["arms"].get(a)) for a in arms) + " |")
    lines += ["", "Paired differences of nDCG@10 (queries resampled within each set; an average weighs each set the same):", ""]
    for name, s in r["sets"].items():
        lines += [f"- {name}: {_paired(pair, p)}" for pair, p in s["paired"].items()]
    if len(r["sets"]) > 1:
        for group, avg in r["average"].items():
            lines += [f"- {AVERAGES[group].format(n=len(avg['sets']))}: {_paired(pair, p)}" for pair, p in avg["paired"].items()]
    lines += ["", "| arm | training examples | queries without one | global batch (per device) | steps | training loss |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for arm, t in train["arms"].items():
        if not t.get("trained"):
            why = f"failed: {t['error']}" if t.get("error") else "not trained: fewer queries than workers"
            lines.append(f"| {arm} | {t['examples']} | {t['queries_without_example']} | {why} | - | - |")
            continue
        lines.append(f"| {arm} | {t['examples']} | {t['queries_without_example']} | {t['batch_size']} ({t['device_batch']}) | "
                     f"{t['steps']} | {t['train_loss']} |")  # fmt: skip
    detectable = ", ".join(f"{n} ±{s['detectable_ndcg@10_difference']:.3f}" for n, s in r["sets"].items())
    lines += ["", f"Each set resolves nDCG@10 differences of about: {detectable} (1.96 x sqrt(2) x the per-query spread of zero-shot "
              "nDCG@10 / sqrt(queries)); a small run checks the loop, not the method (the paper's +1.3 nDCG@10 needs its training sizes).", ""]  # fmt: skip
    return "\n".join(lines)


def render_png(r: dict[str, Any], path: Path) -> None:
    """Grouped bars: nDCG@10 per set (and the averages), an arm a colour, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [(f"{n}{'*' if s['ood'] else ''}", s["arms"]) for n, s in r["sets"].items()]
    if len(r["sets"]) > 1:
        groups += [(AVERAGES[g].format(n=len(a["sets"])), a["arms"]) for g, a in r["average"].items()]
    arms = [a for a in arms_of(r) if any(m.get(a, {}).get("trained") is not False and a in m for _, m in groups)]
    missing = [a for a in arms_of(r) if a not in arms]
    colors = dict(zip(arms_of(r), ["#999999", "#4c72b0", "#c44e52", "#55a868", "#8172b2", "#937860", "#da8bc3"]))
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups) + 2), 3.8))
    for i, arm in enumerate(arms):
        values = [m[arm]["ndcg@10"] if arm in m and "ndcg@10" in m[arm] else np.nan for _, m in groups]
        lo = [v - m[arm]["ndcg@10_ci95"][0] if arm in m and "ndcg@10" in m[arm] else 0 for v, (_, m) in zip(values, groups)]
        hi = [m[arm]["ndcg@10_ci95"][1] - v if arm in m and "ndcg@10" in m[arm] else 0 for v, (_, m) in zip(values, groups)]
        ax.bar(np.arange(len(groups)) + (i - (len(arms) - 1) / 2) * width, values, width, yerr=[lo, hi], capsize=3, label=arm,
               color=colors[arm])  # fmt: skip
    ax.set_xticks(np.arange(len(groups)), [g for g, _ in groups], rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel("nDCG@10 (95% CI)")
    ax.set_title(f"Retriever per arm on {len(r['sets'])} BEIR set(s), {r['eval']['queries']} queries"
                 + (f"\nnot trained: {', '.join(missing)}" if missing else ""), color="#b00020" if missing else "black")  # fmt: skip
    ax.legend(fontsize=8, ncols=len(arms))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_card_section(out: OutputLayout, section: str) -> None:
    """The card's evaluation section, replaced if an earlier evaluate wrote one."""
    card = out.read_text(layout.CARD) if out.exists(layout.CARD) else ""
    if CARD_MARK in card:
        card = card[: card.index(CARD_MARK)].rstrip() + "\n"
    out.write_text(layout.CARD, card.rstrip() + "\n\n" + section)
