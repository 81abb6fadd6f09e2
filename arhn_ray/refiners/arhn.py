"""ARHN's refiner: the method driven through an LLM engine, Stage 1 for a batch of rows, then
Stage 2, then labels.

This is what a Ray actor calls (``fused`` runs both stages, ``staged`` one each: ``steps()``), and
what tests call with a scripted engine. ``refine`` / ``stage1`` / ``stage2`` drive a blocking
engine; ``arefine`` / ``astage1`` / ``astage2`` drive an async one (``agenerate``, ``async_steps()``)
through the same stage code. ``METHOD`` at the end declares the method to the pipeline.
Rows travel as plain dicts; a row whose LLM call still fails after the retries comes back
rejected with the reason, the other rows of the batch go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from dataclasses import asdict
from typing import Any, Protocol

from arhn_ray import bundled
from arhn_ray.config import Config, method_options, pools
from arhn_ray.engines.base import ChatRequest, ChatResult, Engine
from arhn_ray.method import labeling as lb
from arhn_ray.method.decisions import LlmCall
from arhn_ray.method.prompts import PromptSet, chat
from arhn_ray.method.ranking import parse_ranking
from arhn_ray.refiners.base import AsyncStep, Method, Metrics, Outcome, Step, provenance

Steps = Generator[list[ChatRequest], list[ChatResult], list[Outcome]]
SCREEN_SCORES = "screen_scores"  # a row's teacher scores of its judged negatives, from Stage 1 to Stage 2


class Scorer(Protocol):
    """The screen's teacher (refiners/teacher.py): one score a (query, passage) pair."""

    model: str

    def score(self, pairs: list[tuple[str, str]]) -> list[float]: ...

    def close(self) -> None: ...


class ArhnRefiner:
    def __init__(
        self,
        engine: Engine,
        options: lb.MethodOptions,
        prompts: PromptSet,
        truncate: Callable[[str], str] | None = None,
        stage1_max_tokens: int = 1024,
        stage2_max_tokens: int = 128,
        retries: int = 2,
        screen: Scorer | None = None,
    ):
        self.engine = engine
        self.screen = screen
        self.options = options
        self.prompts = prompts
        self.truncate = truncate
        self.stage1_max_tokens = stage1_max_tokens
        self.stage2_max_tokens = stage2_max_tokens
        self.retries = retries
        self.provenance = provenance(options.variant, engine.model, asdict(options), prompts)

    def close(self) -> None:
        self.engine.close()
        if self.screen is not None:
            self.screen.close()

    def steps(self) -> dict[str, Step]:
        return {"fused": self.refine, "stage1": self.stage1, "stage2": self.stage2}

    def async_steps(self) -> dict[str, AsyncStep]:
        return {"fused": self.arefine, "stage1": self.astage1, "stage2": self.astage2}

    def metrics(self) -> Metrics:
        counter = getattr(self.engine, "preemptions", None)  # vLLM's engines count them; others do not
        return Metrics(preemptions=counter() if callable(counter) else None)

    def plans(self, rows: list[dict]) -> list[lb.RowPlan]:
        """Each row planned once for both stages; behind a screen, the teacher scores every judged
        negative of the batch in one call (as the LLM reads it: title and text, truncated) and the
        scores travel in the row, so a ``staged`` Stage 2 plans the same chunks."""
        plans = [lb.plan_row(row, self.options, self.truncate) for row in rows]
        if self.screen is None:
            return plans
        todo = [(r, p) for r, p in enumerate(plans) if SCREEN_SCORES not in rows[r]]
        pairs = [(rows[r]["query"], p.negative_texts[i]) for r, p in todo for i in p.judged]
        scores = iter(self.screen.score(pairs))
        for r, p in todo:
            rows[r][SCREEN_SCORES] = [next(scores) for _ in p.judged]
        return [lb.screen_plan(p, row[SCREEN_SCORES], self.options) for row, p in zip(rows, plans)]

    def _plan(self, row: dict) -> lb.RowPlan:
        """A row's plan from what the row carries (Stage 2 of a ``staged`` run, ``relabel``)."""
        scores = row.get(SCREEN_SCORES) if self.screen is not None else None
        return lb.plan_row(row, self.options, self.truncate, scores)

    def _generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """The engine's results, resending failed requests up to ``retries`` times."""
        results = self.engine.generate(requests)
        for _ in range(self.retries):
            failed = [i for i, r in enumerate(results) if r.error]
            if not failed:
                break
            again = self.engine.generate([requests[i] for i in failed])
            for i, r in zip(failed, again):
                results[i] = r
        return results

    async def _agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results = await self.engine.agenerate(requests)  # type: ignore[attr-defined]
        for _ in range(self.retries):
            failed = [i for i, r in enumerate(results) if r.error]
            if not failed:
                break
            again = await self.engine.agenerate([requests[i] for i in failed])  # type: ignore[attr-defined]
            for i, r in zip(failed, again):
                results[i] = r
        return results

    def _drive(self, steps: Steps) -> list[Outcome]:
        results = None
        try:
            while True:
                results = self._generate(steps.send(results))
        except StopIteration as done:
            return done.value

    async def _adrive(self, steps: Steps) -> list[Outcome]:
        results = None
        try:
            while True:
                results = await self._agenerate(steps.send(results))
        except StopIteration as done:
            return done.value

    def stage1(self, rows: list[dict], plans: list[lb.RowPlan] | None = None) -> list[Outcome]:
        """Adds ``llm`` (one entry per chunk, Stage 1 filled) to each row."""
        return self._drive(self._stage1(rows, plans))

    def stage2(self, rows: list[dict], plans: list[lb.RowPlan] | None = None) -> list[Outcome]:
        """Reads the stored Stage 1 texts, ranks what needs ranking, labels every negative."""
        return self._drive(self._stage2(rows, plans))

    def refine(self, rows: list[dict]) -> list[Outcome]:
        """Both stages (the ``fused`` pipeline); each row is planned once for both."""
        plans = self.plans(rows)
        first = self.stage1(rows, plans)
        ready = [(o.row, plan) for o, plan in zip(first, plans) if o.rejected is None]
        second = iter(self.stage2([row for row, _ in ready], [plan for _, plan in ready]))
        return [o if o.rejected else next(second) for o in first]

    async def astage1(self, rows: list[dict], plans: list[lb.RowPlan] | None = None) -> list[Outcome]:
        return await self._adrive(self._stage1(rows, plans))

    async def astage2(self, rows: list[dict], plans: list[lb.RowPlan] | None = None) -> list[Outcome]:
        return await self._adrive(self._stage2(rows, plans))

    async def arefine(self, rows: list[dict]) -> list[Outcome]:
        """Both stages with an async engine, each row on its own: its Stage 2 goes out as soon
        as its own Stage 1 is back, while other rows are still in Stage 1."""

        async def one(row: dict, plan: lb.RowPlan) -> Outcome:
            (first,) = await self.astage1([row], [plan])
            if first.rejected:
                return first
            (second,) = await self.astage2([row], [plan])
            return second

        plans = await asyncio.to_thread(self.plans, rows) if self.screen is not None else self.plans(rows)
        return list(await asyncio.gather(*(one(row, plan) for row, plan in zip(rows, plans))))

    # The stages are generators: they yield the requests they need and are sent the results,
    # so one body serves the blocking engines (``_drive``) and the async ones (``_adrive``).

    def _stage1(self, rows: list[dict], plans: list[lb.RowPlan] | None) -> Steps:
        plans = plans if plans is not None else self.plans(rows)
        requests, owners = [], []
        for r, plan in enumerate(plans):
            rows[r]["llm"] = []
            for c in range(len(plan.chunks)):
                prompt, constraint = lb.stage1_request(plan, c, self.prompts, self.options)
                requests.append(ChatRequest(chat(prompt), (rows[r]["query_id"], 1, c), self.stage1_max_tokens, constraint))
                owners.append((r, c))
        results = (yield requests) if requests else []
        failures: dict[int, str] = {}
        for (r, c), res in zip(owners, results):
            if res.error:
                failures.setdefault(r, f"engine_error: stage 1 chunk {c}: {res.error}")
            rows[r]["llm"].append(_call(c, res))
        return [Outcome(row, failures.get(r), "llm" if r in failures else None) for r, row in enumerate(rows)]

    def _stage2(self, rows: list[dict], plans: list[lb.RowPlan] | None) -> Steps:
        out: list[Outcome | None] = [None] * len(rows)
        work = []
        requests, owners = [], []
        for r, row in enumerate(rows):
            plan = plans[r] if plans is not None else self._plan(row)
            calls = row.get("llm") or []
            if len(calls) != len(plan.chunks):
                out[r] = Outcome(row, f"stage 1 outputs for {len(calls)} chunks, expected {len(plan.chunks)}", "llm")
                continue
            snippets = [lb.read_stage1(plan, c, call["stage1_text"] or "", self.options) for c, call in enumerate(calls)]
            anchor = lb.row_anchor(snippets, self.options)
            stage2 = [lb.stage2_request(plan, c, s, self.prompts, self.options, anchor) for c, s in enumerate(snippets)]
            for c, req in enumerate(stage2):
                if req is not None:
                    requests.append(
                        ChatRequest(chat(req.prompt), (row["query_id"], 2, c), self.stage2_max_tokens, req.constraint)
                    )
                    owners.append((r, c))
            work.append((r, plan, snippets, stage2))
        results = (yield requests) if requests else []
        answers: dict[tuple[int, int], ChatResult] = dict(zip(owners, results))
        for r, plan, snippets, stage2 in work:
            row = rows[r]
            ranked: list = []
            error = None
            for c, req in enumerate(stage2):
                res = answers.get((r, c))
                if req is None or res is None:
                    ranked.append(None)
                    continue
                if res.error:
                    error = error or f"engine_error: stage 2 chunk {c}: {res.error}"
                ranking = parse_ranking(res.text, len(req.positions))
                ranked.append((req, ranking))
                row["llm"][c].update(_call(c, res, stage=2), stage2_status=ranking.status)
            if error:
                out[r] = Outcome(row, error, "llm")
                continue
            labels = lb.label_row(plan, snippets, ranked, self.options)
            refined = {
                **row,
                "positive_passages": labels.positive_passages,
                "negative_passages": labels.negative_passages,
                "removed_passages": labels.removed_passages,
                "decisions": labels.decisions,
                "positive_snippet": labels.positive_snippet,
                "positive_grounding": labels.positive_grounding,
                "provenance": self.provenance,
            }
            out[r] = Outcome(refined, labels.rejected, "decisions" if labels.rejected else None)
        return out  # type: ignore[return-value]


def _call(chunk: int, res: ChatResult, stage: int = 1) -> dict:
    """A chunk's ``LlmCall`` as its Stage 1 result makes it, or the Stage 2 fields its ranking adds."""
    if stage == 1:
        return LlmCall(chunk, res.text, res.prompt_tokens, res.output_tokens, res.finish_reason).to_dict()
    return {
        "stage2_text": res.text,
        "stage2_prompt_tokens": res.prompt_tokens,
        "stage2_output_tokens": res.output_tokens,
        "stage2_finish_reason": res.finish_reason,
    }


# -- the method, declared to the pipeline (refiners/base.py's Method) --


def _build(cfg: Config, engine: Any = None) -> ArhnRefiner:
    from arhn_ray.data.truncation import make_truncator
    from arhn_ray.engines.factory import start_engine
    from arhn_ray.refiners.teacher import Teacher

    s = cfg.screen  # the screen's teacher sits on the replica beside its engine
    screen = s.model and Teacher(
        s.model, s.kind, s.batch_size, s.query_prefix, s.passage_prefix, max_length=cfg.truncation.max_seq_len
    )
    return ArhnRefiner(engine or start_engine(cfg.engine), method_options(cfg), PromptSet.load(cfg.prompts.version, cfg.prompts.dir),
                       truncate=make_truncator(cfg.truncation.tokenizer, cfg.truncation.max_seq_len), stage1_max_tokens=cfg.stage1.max_tokens,
                       stage2_max_tokens=cfg.stage2.max_tokens, retries=cfg.pipeline.retries, screen=screen or None)  # fmt: skip


def _labels_from(cfg: Config) -> str:
    e = cfg.engine
    if e.kind == "replay":
        return f"recorded LLM outputs ({e.replay_path}); no model ran"
    if e.kind == "openai":
        return f"{e.model} over the OpenAI-compatible endpoint {e.base_url}"
    if bundled.is_bundled(e.model):
        return f"the bundled {bundled.short_name(e.model)} model (135M parameters) on vLLM"
    return f"{e.model} on vLLM"


def _describe(cfg: Config) -> dict[str, Any]:
    prompts, s = PromptSet.load(cfg.prompts.version, cfg.prompts.dir), cfg.screen
    screen = None
    if s.model and s.top_k is None:
        screen = f"{s.model} scored every judged negative (a calibration run: all judged)"
    elif s.model:
        screen = f"{s.model} sent its top {s.top_k} negatives a query to Stage 1; the rest were kept unjudged (reason screened)"
    return {"model": cfg.engine.model, "engine": cfg.engine.kind, "variant": cfg.method.variant, "prompt_version": prompts.version,
            "prompt_sha256": prompts.sha256, "labels_from": _labels_from(cfg),
            "negatives_per_query": cfg.method.negatives_per_query, "screen": screen}  # fmt: skip


def _repos(cfg: Config) -> list[tuple[str, str, bool]]:
    repos = []
    for step, e in pools(cfg):
        key = "stage2.engine" if step == "stage2" and cfg.stage2.engine else "engine"
        if e.kind == "vllm":
            repos += [(e.model, f"{key}.model", False), (e.tokenizer, f"{key}.tokenizer", True)]
    if cfg.screen.model:
        repos.append((cfg.screen.model, "screen.model", False))
    return repos


METHOD = Method("arhn", modes=("fused", "staged"), replica="llm", has_async=True, build=_build, describe=_describe, repos=_repos)
