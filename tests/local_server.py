"""A real HTTP server on 127.0.0.1 (ephemeral port, own thread) for download tests.

Files are served from memory (bytes) or from disk (a path, streamed). Every GET is counted, and
a file can be served short: the full Content-Length is announced, fewer bytes are sent, and the
connection is closed — what a dropped transfer looks like to the client. A file can be served
slowly (``pace``: seconds of pause after each 64 KiB), for tests that act during a download.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class LocalServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes | Path] = {}
        self.short: dict[str, int] = {}  # name -> bytes actually sent
        self.hits: Counter[str] = Counter()
        self.pace: dict[str, float] = {}  # name -> seconds of pause after each 64 KiB sent
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                server.hits[name] += 1
                body = server.files.get(name)
                if body is None:
                    self.send_error(404, "File not found")
                    return
                size = body.stat().st_size if isinstance(body, Path) else len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                limit = server.short.get(name, size)
                pace = server.pace.get(name)
                try:
                    with body.open("rb") if isinstance(body, Path) else io.BytesIO(body) as f:
                        _copy(f, self.wfile, limit, pace)
                except (BrokenPipeError, ConnectionResetError):  # the client went away
                    return
                if limit < size:
                    self.close_connection = True

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _copy(src, dst, limit: int, pace: float | None = None) -> None:
    left = limit
    while left > 0:
        chunk = src.read(min(left, 1 << 16 if pace else 1 << 20))
        if not chunk:
            break
        dst.write(chunk)
        left -= len(chunk)
        if pace:
            time.sleep(pace)


def closed_port_url(name: str) -> str:
    """A URL on 127.0.0.1 where nothing listens: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


__all__ = ["LocalServer", "closed_port_url"]
