"""A Hugging Face Hub on loopback that answers the routes huggingface_hub's ``HfFileSystem`` and
``HfApi`` use, for dataset repositories: revision info, the paginated tree listing, paths-info,
and ``resolve`` with ``Range`` reads. Errors come as the Hub sends them (``X-Error-Code``
RepoNotFound / RevisionNotFound / EntryNotFound, 401 for a bad token), and ``throttle_every``
answers every n-th request 429 with the Hub's ``RateLimit`` headers. Counts every request by route.
Point ``HF_ENDPOINT`` at ``url``."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

REPO_API = re.compile(
    r"^/api/datasets/(?P<repo>[^/]+/[^/]+)(?:/(?P<route>revision|tree|paths-info)/(?P<rev>[^/]+)(?P<path>/.*)?)?$"
)
RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
PAGE = 1  # tree entries a page: every listing of more than one entry follows the Link header


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], token: str = "hf_good_token", throttle_every: int = 0):
        """``repos``: repository id -> {path in repo: bytes}, each its first commit, ``main``."""
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}
        self.main: dict[str, str] = {}
        for repo, files in repos.items():
            self.advance(repo, files)
        self.token = token
        self.throttle_every = throttle_every
        self.requests: Counter[str] = Counter()
        self.throttled = 0
        self._n = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def advance(self, repo: str, files: dict[str, bytes]) -> str:
        """A new commit on ``main``; the earlier ones stay readable by their sha."""
        sha = hashlib.sha1(f"{repo}:{len(self.commits.get(repo, {}))}".encode()).hexdigest()
        self.commits.setdefault(repo, {})[sha] = files
        self.main[repo] = sha
        return sha

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve()

            def do_POST(self):
                self._serve()

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, payload, headers: dict | None = None, head: bool = False):
                self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

            def _error(self, code: int, error_code: str | None = None, message: str = ""):
                headers = {"X-Error-Message": message} if message else {}
                if error_code:
                    headers["X-Error-Code"] = error_code
                self._send(code, json.dumps({"error": message or error_code}).encode(), headers)

            def _serve(self, head: bool = False):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                route = "resolve" if RESOLVE.match(url.path) else (REPO_API.match(url.path) or {"route": None})["route"] or "info"
                with hub._lock:
                    hub.requests[route] += 1
                    hub._n += 1
                    throttle = hub.throttle_every and hub._n % hub.throttle_every == 0
                    if throttle:
                        hub.throttled += 1
                if throttle:
                    return self._send(
                        429,
                        b"rate limited",
                        {"RateLimit": '"api";r=0;t=1', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'},
                    )
                if self.headers.get("Authorization", "") not in ("", f"Bearer {hub.token}"):
                    return self._error(401, message="Invalid credentials in Authorization header")
                m = RESOLVE.match(url.path) or REPO_API.match(url.path)
                if not m:
                    return self._error(404, "EntryNotFound", "no such route")
                repo = m["repo"]
                if repo not in hub.commits:
                    return self._error(404, "RepoNotFound", "Repository not found")
                rev = unquote(m["rev"] or "main")
                sha = hub.main[repo] if rev == "main" else rev
                if sha not in hub.commits[repo]:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                files = hub.commits[repo][sha]
                if route == "resolve":
                    return self._resolve(sha, files, unquote(m["path"]), head)
                if route in ("info", "revision"):
                    return self._json({"id": repo, "sha": sha, "private": False,
                                       "siblings": [{"rfilename": p} for p in sorted(files)]}, head=head)  # fmt: skip
                if route == "tree":
                    return self._tree(repo, files, unquote((m["path"] or "/")[1:]), parse_qs(url.query))
                paths = parse_qs(body.decode()).get("paths", [])
                return self._json([e for e in _entries(files, "", True) if e["path"] in paths])

            def _tree(self, repo, files, path, query):
                entries = _entries(files, path, query.get("recursive", ["False"])[0].lower() == "true")
                if path and not entries:
                    return self._error(404, "EntryNotFound", f"{path} does not exist on main")
                start = int(query.get("cursor", ["0"])[0])
                page = entries[start : start + PAGE]
                headers = {}
                if start + PAGE < len(entries):
                    q = {k: v[0] for k, v in query.items() if k != "cursor"}
                    nxt = (
                        f"{hub.url}{self.path.split('?')[0]}?"
                        + "&".join(f"{k}={v}" for k, v in q.items())
                        + f"&cursor={start + PAGE}"
                    )
                    headers["Link"] = f'<{nxt}>; rel="next"'
                return self._json(page, headers)

            def _resolve(self, sha, files, path, head):
                if path not in files:
                    return self._error(404, "EntryNotFound", f"{path} does not exist")
                data = files[path]
                headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
                rng = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if not rng:
                    return self._send(200, data, headers, head)
                start = int(rng[1])
                end = min(int(rng[2]) if rng[2] else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, data[start : end + 1], headers, head)

        return Handler


def _entries(files: dict[str, bytes], under: str, recursive: bool) -> list[dict]:
    """The tree under ``under``: files and the folders between, as the Hub lists them."""
    prefix = f"{under.rstrip('/')}/" if under else ""
    out: dict[str, dict] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :].split("/")
        depth = len(rest) if recursive else 1
        for i in range(1, min(depth, len(rest)) + 1):
            sub = prefix + "/".join(rest[:i])
            if i == len(rest):
                out[sub] = {"type": "file", "path": sub, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            else:
                out.setdefault(sub, {"type": "directory", "path": sub, "oid": hashlib.sha1(sub.encode()).hexdigest()})
    return list(out.values())
