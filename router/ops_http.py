"""The operations endpoint of ``router serve`` (``[http]``): ``/healthz`` and ``/metrics``.

- ``GET /healthz``: 200 when every check passes, else 503; the body is one JSON document,
  ``{"status": "ok"|"failing", "checks": {"listener": {"ok": true, "detail": "..."},
  "database": {...}, "archive": {...}}}``, so a load balancer or an admin sees which check failed.
- ``GET /metrics``: the node's metrics in the Prometheus text format (:mod:`router.metrics`).

Served by the standard library's WSGI server, one thread per request, so a slow check never
holds up a scrape. Off by default; bind it to a management address, it has no authentication.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from router.errors import RouterError, first_line

LOG = logging.getLogger(__name__)

#: A check: returns a one-line detail when healthy, raises with the reason when not.
Check = Callable[[], str]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one health check."""

    name: str
    ok: bool
    detail: str


def run_checks(checks: dict[str, Check]) -> list[CheckResult]:
    """Run every check; an exception is a failed check whose detail is its first line."""
    results = []
    for name, check in checks.items():
        try:
            results.append(CheckResult(name, True, check()))
        except Exception as exc:  # noqa: BLE001 - any failure of a check is the answer, never a 500
            results.append(CheckResult(name, False, f"{type(exc).__name__}: {first_line(exc)}"))
    return results


def archive_writable(folder: Path) -> str:
    """Create, write, fsync and delete a small file in ``folder`` (the archive's incoming folder).

    A permission check (``os.access``) would pass for root on a read-only or full file system;
    writing is the only proof.

    Raises
    ------
    OSError
        If the file cannot be created, written or synced.
    """
    descriptor, name = tempfile.mkstemp(prefix=".healthz-", dir=folder)
    try:
        os.write(descriptor, b"ok")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
        os.unlink(name)
    return f"wrote a file in {folder}"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("http %s", format % args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class HttpEndpoint:
    """``/healthz`` and ``/metrics`` on ``host:port`` (0 picks a free port)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, checks: dict[str, Check]) -> None:
        self.host = host
        self.port = port
        self.checks = checks
        self._metrics_app = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def bound_port(self) -> int:
        """The port listened on (after :meth:`start`)."""
        return int(self._server.server_port) if self._server is not None else self.port

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises
        ------
        RouterError
            If the address cannot be bound.
        """
        try:
            self._server = make_server(
                self.host, self.port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise RouterError(f"cannot listen for HTTP on {self.host} port {self.port}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="router-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "GET only\n")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            results = run_checks(self.checks)
            healthy = all(result.ok for result in results)
            body = json.dumps(
                {
                    "status": "ok" if healthy else "failing",
                    "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
                },
                indent=2,
            ).encode()
            if not healthy:
                LOG.warning("healthz failing: %s", ", ".join(f"{r.name}: {r.detail}" for r in results if not r.ok))
            start_response(
                "200 OK" if healthy else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return _plain(start_response, "404 Not Found", "not found: try /healthz or /metrics\n")


def _plain(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
