"""How a batch of rows becomes outcomes, one module per method, side by side.

``arhn`` drives the two LLM stages through an engine (arhn_ray/engines); ``topk_percpos``, the
paper's baseline, scores pairs with a teacher. The pipeline, the report, staging and the plan ask
``method_for(cfg)`` what a method needs instead of branching on its name: a third method is one
module and one line of ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from arhn_ray import bundled
from arhn_ray.config import METHOD_MODES, Config, method_options, pools
from arhn_ray.method.prompts import PromptSet
from arhn_ray.refiners.base import Outcome, Refiner, provenance

__all__ = ["METHODS", "Method", "Outcome", "Refiner", "method_for", "provenance"]


@dataclass(frozen=True)
class Method:
    name: str
    replica: str  # what a replica holds, and so how it is placed: "llm" (engine.*) | "teacher" (baseline.*)
    build: Callable[[Config, Any], Refiner]  # (cfg, an engine to use or None) -> the replica's refiner
    describe: Callable[[Config], dict[str, Any]]  # model, engine, variant, prompts, labels_from: the card's words
    repos: Callable[[Config], list[tuple[str, str, bool]]]  # (name, config key, tokenizer only) its replicas load
    has_async: bool  # its refiner has arefine (an async engine's replicas take several batches at once)


def method_for(cfg: Config) -> Method:
    return METHODS[cfg.method.name]


def _build_arhn(cfg: Config, engine: Any = None) -> Refiner:
    from arhn_ray.data.truncation import make_truncator
    from arhn_ray.engines.factory import start_engine
    from arhn_ray.refiners.arhn import ArhnRefiner

    return ArhnRefiner(
        engine or start_engine(cfg.engine),
        method_options(cfg),
        PromptSet.load(cfg.prompts.version, cfg.prompts.dir),
        truncate=make_truncator(cfg.truncation.tokenizer, cfg.truncation.max_seq_len),
        stage1_max_tokens=cfg.stage1.max_tokens,
        stage2_max_tokens=cfg.stage2.max_tokens,
        retries=cfg.pipeline.retries,
        screen=_screen(cfg),
    )


def _screen(cfg: Config) -> Any:
    """The screen's teacher, on the replica beside its engine (None: no screen)."""
    from arhn_ray.refiners.teacher import Teacher

    s = cfg.screen
    if not s.model:
        return None
    return Teacher(s.model, s.kind, s.batch_size, s.query_prefix, s.passage_prefix, max_length=cfg.truncation.max_seq_len)


def _labels_from_llm(cfg: Config) -> str:
    e = cfg.engine
    if e.kind == "replay":
        return f"recorded LLM outputs ({e.replay_path}); no model ran"
    if e.kind == "openai":
        return f"{e.model} over the OpenAI-compatible endpoint {e.base_url}"
    if bundled.is_bundled(e.model):
        return f"the bundled {bundled.short_name(e.model)} model (135M parameters) on vLLM"
    return f"{e.model} on vLLM"


def _describe_arhn(cfg: Config) -> dict[str, Any]:
    prompts = PromptSet.load(cfg.prompts.version, cfg.prompts.dir)
    return {"model": cfg.engine.model, "engine": cfg.engine.kind, "variant": cfg.method.variant, "prompt_version": prompts.version,
            "prompt_sha256": prompts.sha256, "labels_from": _labels_from_llm(cfg),
            "negatives_per_query": cfg.method.negatives_per_query, "screen": _screen_words(cfg)}  # fmt: skip


def _screen_words(cfg: Config) -> str | None:
    s = cfg.screen
    if not s.model:
        return None
    if s.top_k is None:
        return f"{s.model} scored every judged negative (a calibration run: all judged)"
    return f"{s.model} sent its top {s.top_k} negatives a query to Stage 1; the rest were kept unjudged (reason screened)"


def _repos_arhn(cfg: Config) -> list[tuple[str, str, bool]]:
    repos = []
    for step, e in pools(cfg):
        key = "stage2.engine" if step == "stage2" and cfg.stage2.engine else "engine"
        if e.kind == "vllm":
            repos += [(e.model, f"{key}.model", False), (e.tokenizer, f"{key}.tokenizer", True)]
    if cfg.screen.model:
        repos.append((cfg.screen.model, "screen.model", False))
    return repos


def _build_topk_percpos(cfg: Config, engine: Any = None) -> Refiner:
    from arhn_ray.refiners.teacher import Teacher
    from arhn_ray.refiners.topk_percpos import TopKPercPosRefiner

    b = cfg.baseline
    teacher = Teacher(b.model, b.kind, b.batch_size, b.query_prefix, b.passage_prefix, max_length=cfg.truncation.max_seq_len)
    return TopKPercPosRefiner(teacher, b.relative_margin, b.keep)


def _describe_topk_percpos(cfg: Config) -> dict[str, Any]:
    return {"model": cfg.baseline.model, "engine": "teacher", "variant": "topk_percpos", "prompt_version": None,
            "prompt_sha256": None, "labels_from": f"the TopK-PercPos teacher {cfg.baseline.model}"}  # fmt: skip


METHODS: dict[str, Method] = {
    "arhn": Method("arhn", "llm", _build_arhn, _describe_arhn, _repos_arhn, has_async=True),
    "topk_percpos": Method(
        "topk_percpos",
        "teacher",
        _build_topk_percpos,
        _describe_topk_percpos,
        lambda cfg: [(cfg.baseline.model, "baseline.model", False)],
        has_async=False,
    ),
}

if set(METHODS) != set(METHOD_MODES):  # config.py names the methods a config may choose
    raise ImportError(f"refiners.METHODS {sorted(METHODS)} and config.METHOD_MODES {sorted(METHOD_MODES)} differ")
