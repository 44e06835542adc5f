"""A fake Hugging Face hub for tests: the few endpoints ``huggingface_hub``'s
``snapshot_download`` and ``hf_hub_download`` use, served from memory on a
loopback port (point ``HF_ENDPOINT`` at ``hub.url``).

    with FakeHub({"org/model": {"config.json": b"{...}", "model.safetensors": data}}) as hub:
        ...  # HF_ENDPOINT=hub.url HF_HUB_OFFLINE=0 mlxhost pull org/model

Files download through real HTTP with ``Range`` support, so resumed downloads
are real; ``drop_after`` cuts one file's first response after some bytes (a
dropped connection). ``requests`` records (method, path, Range header) for asserts.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(
        self, repos: Mapping[str, Mapping[str, bytes]], *, commit: str = "a" * 40,
        revisions: Mapping[str, str] | None = None,
    ) -> None:
        # repo id -> file name -> bytes (every revision serves the same files).
        self.repos = {repo: dict(files) for repo, files in repos.items()}
        self.commit = commit
        # Other revision names (branches, tags) -> their commit.
        self.revisions = {"main": commit, commit: commit, **(revisions or {})}
        self.requests: list[tuple[str, str, str | None]] = []
        # File name -> bytes after which its next GET without Range is cut off.
        self.drop_after: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def ranges(self, name: str) -> list[str]:
        """The Range headers of the GETs of file ``name``."""
        return [r for method, path, r in self.requests if method == "GET" and path.endswith("/" + name) and r]

    def gets(self, name: str) -> int:
        return sum(1 for method, path, _ in self.requests if method == "GET" and path.endswith("/" + name))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _json(self, status: int, body: Any, head: bool, error_code: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                if error_code is not None:  # what huggingface_hub tells errors apart by
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _serve(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?(/.*)?", path)
                if api:
                    return self._api(api.group(1), api.group(2), api.group(3), head)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if resolve:
                    repo, revision, name = resolve.groups()
                    return self._file(repo, revision, name, head)
                self._json(404, {"error": "not found"}, head)

            def _missing_repo(self, head: bool) -> None:
                self._json(401, {"error": "Repository not found"}, head, "RepoNotFound")

            def _missing_revision(self, head: bool) -> None:
                self._json(404, {"error": "Invalid rev id"}, head, "RevisionNotFound")

            def _api(self, repo: str, kind: str | None, revision: str | None, head: bool) -> None:
                files = hub.repos.get(repo)
                if files is None:
                    return self._missing_repo(head)
                commit = hub.revisions.get(revision or "main")
                if commit is None:
                    return self._missing_revision(head)
                if kind == "tree":
                    entries = [
                        {"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
                        for name, data in sorted(files.items())
                    ]
                    return self._json(200, entries, head)
                siblings = [{"rfilename": name, "size": len(data)} for name, data in sorted(files.items())]
                self._json(200, {"id": repo, "modelId": repo, "sha": commit, "siblings": siblings}, head)

            def _file(self, repo: str, revision: str, name: str, head: bool) -> None:
                files = hub.repos.get(repo)
                if files is None:
                    return self._missing_repo(head)
                commit = hub.revisions.get(revision)
                if commit is None:
                    return self._missing_revision(head)
                if name not in files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = files[name]
                start = 0
                wanted = self.headers.get("Range")
                found = re.fullmatch(r"bytes=(\d+)-", wanted or "")
                if found:
                    start = int(found.group(1))
                body = data[start:]
                self.send_response(206 if found else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if found:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{_blob_id(data)}"')
                self.send_header("X-Repo-Commit", commit)
                self.end_headers()
                if head:
                    return
                cut = hub.drop_after.pop(name, None) if not found else None
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler


def _blob_id(data: bytes) -> str:
    """The git blob id the hub reports as a file's etag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
