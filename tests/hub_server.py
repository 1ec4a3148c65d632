"""A local HTTP server standing in for the Hugging Face hub and for raw GitHub files.

It answers the routes ``huggingface_hub`` uses to list and download a dataset's files:

- ``GET /api/datasets/{owner}/{name}/tree/{revision}[/{folder}]``: the files as JSON
  (``type``, ``path``, ``size``, ``oid``), all on one page;
- ``HEAD`` / ``GET /datasets/{owner}/{name}/resolve/{revision}/{path}``: the file, with the
  headers the client reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``);

and ``GET /{owner}/{name}/{ref}/{path}`` as raw GitHub files. A gated dataset answers 401 with
``X-Error-Code: GatedRepo`` unless the request carries ``Authorization: Bearer {token}``.

``with HubServer(datasets={...}, github={...}) as server:`` serves on ``server.url``;
``server.requests`` lists the paths asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, datasets: dict[str, dict[str, bytes]] | None = None,
                 github: dict[str, bytes] | None = None, gated: dict[str, str] | None = None):
        """``datasets``: {owner/name: {path: bytes}}; ``github``: {owner/name/ref/path: bytes};
        ``gated``: {owner/name: the token that opens it}."""
        self.datasets = datasets or {}
        self.github = github or {}
        self.gated = gated or {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - the http.server name
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _missing(self, body: bool, code: str = "EntryNotFound") -> None:
                self._send(404, b'{"error": "not found"}', {"X-Error-Code": code}, body)

            def _answer(self, body: bool) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.requests.append(path)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] == "tree":
                    self._tree("/".join(parts[2:4]), "/".join(parts[6:]), body)
                elif parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":
                    self._file("/".join(parts[1:3]), "/".join(parts[5:]), body)
                elif path.lstrip("/") in hub.github:
                    self._send(200, hub.github[path.lstrip("/")], {}, body)
                else:
                    self._missing(body)

            def _open(self, repo: str, body: bool) -> dict[str, bytes] | None:
                if repo not in hub.datasets:
                    self._send(401, b'{"error": "repository not found"}',
                               {"X-Error-Code": "RepoNotFound"}, body)
                    return None
                token = hub.gated.get(repo)
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    self._send(401, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, body)
                    return None
                return hub.datasets[repo]

            def _tree(self, repo: str, folder: str, body: bool) -> None:
                files = self._open(repo, body)
                if files is None:
                    return
                rows = [{"type": "file", "path": p, "size": len(data),
                         "oid": hashlib.sha1(data).hexdigest()}
                        for p, data in sorted(files.items())
                        if not folder or p.startswith(folder.rstrip("/") + "/")]
                self._send(200, json.dumps(rows).encode(),
                           {"Content-Type": "application/json"}, body)

            def _file(self, repo: str, name: str, body: bool) -> None:
                files = self._open(repo, body)
                if files is None:
                    return
                if name not in files:
                    self._missing(body)
                    return
                data = files[name]
                self._send(200, data, {"X-Repo-Commit": COMMIT,
                                       "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, body)

        return Handler
