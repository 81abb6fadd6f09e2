"""The one engine protocol: a batch of chat requests in, one result per request out.

A failing request gives an error result for that request, never a failed batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    key: tuple[str, int, int] = ("", 0, 0)  # (query_id, stage, chunk): what replay looks up
    max_tokens: int = 1024
    constraint: str | None = None  # a regex the output must match


@dataclass
class ChatResult:
    text: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str) -> ChatResult:
        return cls(error=error, finish_reason="error")


@runtime_checkable
class Engine(Protocol):
    model: str

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncEngine(Protocol):
    """An engine whose requests run concurrently from one event loop (``engine.async_engine``)."""

    model: str

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...
