"""Any OpenAI-compatible chat endpoint (vllm serve, SGLang, llama.cpp server).

Bounded concurrency, timeouts, and retries (tenacity) on 429, 5xx, a dropped connection, a
timeout and a truncated body: after the server's ``Retry-After`` where it sends one (capped),
else with exponential backoff.
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

MAX_RETRY_AFTER_S = 120.0  # a server asking for longer than this is waited on this long, then asked again


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After``: seconds, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _wait(backoff):
    """The server's ``Retry-After`` when it gave one, else ``backoff``."""

    def wait(state) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return min(error.retry_after, MAX_RETRY_AFTER_S)
        return backoff(state)

    return wait


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
            wait=_wait(wait_exponential(multiplier=0.5, max=30)),
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
            raise _Retryable(f"HTTP {resp.status_code}: {resp.text[:200]}", retry_after_s(resp.headers.get("retry-after")))
        if resp.status_code >= 400:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            data = resp.json()
            data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as e:  # cut off mid-body by a proxy or a dying server
            raise _Retryable(f"truncated or malformed answer ({type(e).__name__}): {resp.text[:100]!r}") from None
        return data

    def _one(self, req: ChatRequest) -> ChatResult:
        try:
            data = self._post(self._body(req))
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return ChatResult(
                text=choice["message"].get("content") or "",
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
