"""``hf://`` input: a dataset repository on the Hugging Face Hub, read through huggingface_hub's
fsspec filesystem like any other store (the paper's own data, ``rlhn/default-680K``, is parquet in
the schema arhn-ray reads).

A branch moves, so a run reads one commit: the revision is pinned to its commit sha before any part
is planned, and the pinned path is what the output's ``config.yaml`` keeps; a rerun of the same
``input.path`` into the same output reads that commit again, so a resumed run never mixes two.
The token is huggingface_hub's own (``HF_TOKEN``, or its login), never a config value.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "hf://"
SHA = re.compile(r"^[0-9a-f]{40}$")
ATTEMPTS = 6  # a throttled request is asked this many times in all
MAX_WAIT_S = 60.0


class HubRefused(PermissionError):
    """The Hub refused the token (401 with invalid credentials)."""


def is_hub(path: str) -> bool:
    return path.startswith(PREFIX)


def revision(path: str) -> str | None:
    """The commit an ``hf://`` path is pinned to, else None."""
    if not is_hub(path):
        return None
    from huggingface_hub.utils import parse_hf_uri

    rev = parse_hf_uri(path).revision
    return rev if rev and SHA.match(rev) else None


def pinned(path: str, sha: str) -> str:
    """``path`` at commit ``sha``: ``hf://datasets/OWNER/NAME@SHA[/PATH]``."""
    from huggingface_hub.utils import parse_hf_uri

    uri = parse_hf_uri(path)
    tail = f"/{uri.path_in_repo}" if uri.path_in_repo else ""
    return f"{PREFIX}{uri.type}s/{uri.id}@{sha}{tail}"


def pin_input(inp: Any, saved: Any | None = None) -> None:
    """An ``hf://`` ``inp.path`` (an ``input`` config section) is read at one commit: the one the
    output's earlier run of the same path read (``saved``, that run's ``input`` section; a
    resumed run never mixes two), else the one its revision names now. ``inp.hub_path`` keeps
    the path as given."""
    if not is_hub(inp.path) or revision(inp.path):
        return
    asked = inp.path
    if saved is not None and saved.get("hub_path") == asked and revision(saved.path):
        inp.path, how = saved.path, "the commit this output's earlier run read"
    else:
        inp.path, how = pin(asked, inp.storage_options)[0], "its head now"
    inp.hub_path = asked
    log.info("reading %s at commit %s (%s)", asked, revision(inp.path), how, extra={"notice": True})


def pin(path: str, storage_options: dict | None = None) -> tuple[str, str]:
    """``path`` with its revision (a branch, a tag, none: ``main``) replaced by the commit it names
    now, and that commit. A missing repository or revision raises FileNotFoundError naming it, a
    refused token HubRefused."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import parse_hf_uri

    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            f"input.path {path}: the Hub is offline here (HF_HUB_OFFLINE=1): stage the files, read them locally"
        )
    if sha := revision(path):
        return path, sha
    uri = parse_hf_uri(path)
    options = storage_options or {}
    api = HfApi(endpoint=options.get("endpoint"), token=options.get("token"))
    try:
        be_patient()
        info = api.repo_info(uri.id, revision=uri.revision, repo_type=uri.type)
    except RevisionNotFoundError:
        raise FileNotFoundError(
            f"input.path {path}: the {uri.type} repository {uri.id} has no revision {uri.revision!r}"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"input.path {path}: no {uri.type} repository {uri.id} on the Hub that this token can see (a private or gated one needs HF_TOKEN)"
        ) from None
    except HfHubHTTPError as e:
        if _status(e) == 401:
            raise HubRefused(
                f"input.path {path}: the Hub refused the token in HF_TOKEN ({e.server_message or 'invalid credentials'})"
            ) from None
        raise
    return pinned(path, info.sha), info.sha


def be_patient() -> None:
    """Every huggingface_hub request of this process asks again while the Hub answers 429, waiting
    as its ``RateLimit`` / ``Retry-After`` headers say (bounded): huggingface_hub backs off its file
    reads, not its repository lookups, and fsspec's ``isdir``/``exists`` read a 429 as "missing".
    Once a process, through huggingface_hub's own hook (``set_client_factory``)."""
    global _PATIENT
    if _PATIENT:
        return
    from huggingface_hub import set_client_factory

    try:
        import httpx2 as httpx  # huggingface_hub 2's client
    except ImportError:
        import httpx
    from tenacity import Retrying, retry_if_result, stop_after_attempt

    def wait(state) -> float:
        return wait_s(state.outcome.result().headers, state.attempt_number)

    class Patient(httpx.BaseTransport):
        def __init__(self):
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request):
            def once():
                response = self.inner.handle_request(request)
                if response.status_code == 429:
                    response.read()
                    response.close()
                return response

            retrying = Retrying(retry=retry_if_result(lambda r: r.status_code == 429), wait=wait, stop=stop_after_attempt(ATTEMPTS),
                                retry_error_callback=lambda state: state.outcome.result(),
                                before_sleep=lambda state: log.warning("the Hub throttled %s (429): asking again in %.0f s",
                                                                       request.url.path, state.upcoming_sleep))  # fmt: skip
            return retrying(once)

        def close(self) -> None:
            self.inner.close()

    try:
        from huggingface_hub.utils._http import hf_request_event_hook

        hooks = {"request": [hf_request_event_hook]}
    except ImportError:
        hooks = {}
    set_client_factory(lambda: httpx.Client(transport=Patient(), event_hooks=hooks, follow_redirects=True, timeout=None))
    _PATIENT = True


_PATIENT = False


def open_pinned(uri: str, size: int, block: int, storage_options: dict | None = None):
    """A file of a pinned ``hf://`` path, its size known from the driver's planning, read by range
    GETs on its ``resolve`` URL (backed off on 429 by huggingface_hub's ``http_backoff``): the
    reading process asks the Hub's API nothing, no repository lookup and no tree listing."""
    import fsspec
    from fsspec.spec import AbstractBufferedFile
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff, parse_hf_uri

    options = storage_options or {}
    where = parse_hf_uri(uri)
    url = hf_hub_url(
        where.id, where.path_in_repo, repo_type=where.type, revision=where.revision, endpoint=options.get("endpoint")
    )
    headers = build_hf_headers(token=options.get("token"))

    class PinnedFile(AbstractBufferedFile):
        def _fetch_range(self, start: int, end: int) -> bytes:
            r = http_backoff(
                "GET", url, headers={**headers, "range": f"bytes={start}-{end - 1}"}, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            )
            hf_raise_for_status(r)
            return r.content

    be_patient()
    return PinnedFile(fsspec.filesystem("hf"), uri, mode="rb", block_size=block, size=size, cache_type="none")


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return response.status_code if response is not None else None


def wait_s(headers, attempt: int) -> float:
    """What the Hub's ``RateLimit`` (or ``Retry-After``) header says to wait, else a doubling wait; at most MAX_WAIT_S."""
    from huggingface_hub.utils import parse_ratelimit_headers

    limit = parse_ratelimit_headers(headers)
    after = headers.get("retry-after", "")
    if limit is not None:
        wait = float(limit.reset_in_seconds)
    elif after.isdigit():
        wait = float(after)
    else:
        wait = 2.0**attempt
    return min(MAX_WAIT_S, wait)
