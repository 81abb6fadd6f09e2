"""Secrets never leave the process: a saved config holds ``<redacted>`` where a key looks like a
secret (storage credentials, tokens, API keys), and every log handler masks the secret values
themselves, from any library. Only the *names* of variables that hold secrets (``*_env``) are kept.
"""

from __future__ import annotations

import logging
import os
from typing import Any

_SECRET_WORDS = ("secret", "password", "session_token", "auth_token", "api_key", "apikey", "key_id", "access_key", "credential")
_SECRET_KEYS = {"key", "secret", "token", "password", "authorization"}
REDACTED = "<redacted>"


def is_secret(key: str) -> bool:
    k = key.lower()
    return not k.endswith("_env") and (k in _SECRET_KEYS or any(w in k for w in _SECRET_WORDS))


def redact(node: Any) -> Any:
    """``node`` (dicts and lists) with the value of every secret-looking key replaced."""
    if isinstance(node, dict):
        return {k: REDACTED if is_secret(str(k)) else redact(v) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v) for v in node]
    return node


def secret_values(node: Any, env_names: list[str | None] = ()) -> list[str]:  # type: ignore[assignment]
    """The secret strings ``node`` carries, and the values of the variables ``env_names`` name."""
    found: list[str] = []

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            for k, v in n.items():
                if is_secret(str(k)) and isinstance(v, str) and v:
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(node)
    found += [os.environ[name] for name in env_names if name and os.environ.get(name)]
    return [v for v in found if len(v) >= 4]


class SecretMask(logging.Filter):
    """Replaces known secret values in every record a handler emits, from any library."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, REDACTED)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_in_logs(secrets: list[str]) -> None:
    """Adds a mask of ``secrets`` to every handler of the root logger (once)."""
    if not secrets:
        return
    mask = SecretMask(secrets)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretMask) and f.secrets == mask.secrets for f in handler.filters):
            handler.addFilter(mask)
