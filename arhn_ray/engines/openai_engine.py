"""Any OpenAI-compatible chat endpoint (vllm serve, SGLang, llama.cpp server).

Bounded concurrency, timeouts, and retries with exponential backoff on 429 and 5xx (tenacity).
The API key is read from the environment variable whose *name* the config gives, so it never
enters a config file, a log line or the output.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from arhn_ray.engines.base import ChatRequest, ChatResult
from arhn_ray.engines.options import EngineConfig
from arhn_ray.method.snippets import strip_thinking


class _Retryable(Exception):
    pass


def _is_retryable(e: BaseException) -> bool:
    return isinstance(e, (_Retryable, httpx.TransportError))


class OpenAIEngine:
    def __init__(self, options: EngineConfig):
        if not options.base_url:
            raise ValueError("engine.base_url: the openai engine needs the server's URL")
        self.options = options
        self.model = options.model
        headers = {}
        if options.api_key_env:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise RuntimeError(f"engine.api_key_env names {options.api_key_env!r}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(
            base_url=options.base_url.rstrip("/"),
            headers=headers,
            timeout=options.timeout_s,
            limits=httpx.Limits(max_connections=options.max_concurrency),
        )
        self.pool = ThreadPoolExecutor(max_workers=options.max_concurrency)
        self._post = retry(
            retry=retry_if_exception(_is_retryable),
            stop=stop_after_attempt(options.max_attempts),
            wait=wait_exponential(multiplier=0.5, max=30),
            reraise=True,
        )(self._post_once)

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        o = self.options
        body: dict[str, Any] = {
            "model": o.model,
            "messages": req.messages,
            "max_tokens": req.max_tokens,
            "temperature": o.temperature,
            "top_p": o.top_p,
        }
        if o.top_k > 0:
            body["top_k"] = o.top_k
        if o.min_p > 0:
            body["min_p"] = o.min_p
        if o.seed is not None:
            body["seed"] = o.seed
        if o.chat_template_kwargs:
            body["chat_template_kwargs"] = o.chat_template_kwargs
        if req.constraint and o.regex_param == "structured_outputs":
            body["structured_outputs"] = {"regex": req.constraint}
        elif req.constraint and o.regex_param == "guided_regex":
            body["guided_regex"] = req.constraint
        return body

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.client.post("/chat/completions", json=body)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code >= 400:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def _one(self, req: ChatRequest) -> ChatResult:
        try:
            data = self._post(self._body(req))
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return ChatResult(
                text=strip_thinking(choice["message"].get("content") or ""),
                prompt_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                finish_reason=choice.get("finish_reason"),
            )
        except Exception as e:
            return ChatResult.failed(f"{type(e).__name__}: {e}")

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return list(self.pool.map(self._one, requests))

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.client.close()
