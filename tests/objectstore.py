"""A real S3-compatible server on loopback (moto's server mode) that can be told to fail.

The server is moto's own WSGI application behind a small middleware that injects faults:
the next ``n`` requests matching a method and a key pattern get an HTTP error (503
``SlowDown``, 500) or a delay, or (those of one client, by its User-Agent) no answer until
the test releases them, as a throttled, flaky or stalled object store would give them. Every
request is counted, so tests can see what the store was asked, and the requests being served
are counted, so a test can wait until those it held back have landed.

The test session points the standard AWS variables at it before any engine starts (see
``tests/conftest.py``), so Dask workers and Spark executors reach it exactly as they would
reach a real object store: through the environment, never through resflow's settings.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class _QuietHandler(WSGIRequestHandler):
    """No access log: a run makes hundreds of requests."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class Fault:
    """Fail, delay or hold the next ``times`` requests whose method, path and client match."""

    method: str
    pattern: re.Pattern[str]
    times: int
    status: int = 503
    delay_s: float = 0.0
    agent: str = ""
    held: threading.Event | None = None


class FaultyS3:
    """moto's S3 on ``127.0.0.1:port``, with faults injected on request."""

    def __init__(self, port: int) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._app = DomainDispatcherApplication(create_backend_app)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.injected = 0
        self.in_flight = 0
        self._last_request = time.monotonic()
        self._server = make_server("127.0.0.1", port, self, threaded=True,
                                   request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        fault = self._take_fault(method, path, environ.get("HTTP_USER_AGENT", ""))
        with self._lock:
            self.requests[method] += 1
            self.in_flight += 1
            self._last_request = time.monotonic()
        try:
            if fault is not None and fault.held is not None:
                fault.held.wait(timeout=120)
            elif fault is not None and fault.delay_s:
                time.sleep(fault.delay_s)
            elif fault is not None:
                start_response(f"{fault.status} Injected",
                               [("Content-Type", "application/xml"),
                                ("Content-Length", str(len(SLOW_DOWN)))])
                return [SLOW_DOWN]
            return self._app(environ, start_response)
        finally:
            with self._lock:
                self.in_flight -= 1

    def quiet(self, for_s: float = 0.25) -> bool:
        """No request is being served (every held-back one has landed or been refused) and
        none has arrived for ``for_s`` seconds (a killed client's last bytes are read)."""
        with self._lock:
            return self.in_flight == 0 and time.monotonic() - self._last_request >= for_s

    def _take_fault(self, method: str, path: str, agent: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.pattern.search(path) \
                        and agent.startswith(fault.agent):
                    fault.times -= 1
                    self.injected += 1
                    return fault
        return None

    def fail(self, method: str, pattern: str, times: int, *, status: int = 503,
             delay_s: float = 0.0) -> None:
        """Make the next ``times`` ``method`` requests whose path matches ``pattern`` fail with
        ``status`` (or wait ``delay_s`` seconds first, when given)."""
        with self._lock:
            self._faults.append(Fault(method, re.compile(pattern), times, status, delay_s))

    def hold(self, method: str, pattern: str, times: int, *, agent: str = "") -> threading.Event:
        """Leave the next ``times`` matching requests unanswered, as a stalled server does,
        until the returned event is set; then they are served (to a client that may be gone)."""
        release = threading.Event()
        with self._lock:
            self._faults.append(Fault(method, re.compile(pattern), times, agent=agent,
                                      held=release))
        return release

    def clear(self) -> None:
        """Drop every fault still pending, and answer the requests still held."""
        with self._lock:
            for fault in self._faults:
                if fault.held is not None:
                    fault.held.set()
            self._faults.clear()
            self.injected = 0

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url).create_bucket(Bucket=name)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join()
