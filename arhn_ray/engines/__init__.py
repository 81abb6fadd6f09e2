"""LLM engines behind one protocol: ``vllm`` (in-process), ``openai`` (HTTP), ``replay`` (recorded)."""

from arhn_ray.engines.base import AsyncEngine, ChatRequest, ChatResult, Engine

__all__ = ["AsyncEngine", "ChatRequest", "ChatResult", "Engine"]
