"""``anonymize serve``: the real API function behind a local HTTP server, with moto behind it.

``POST /anonymize`` runs the API function; ``POST /uploads`` hands out presigned URLs into a
local moto S3 whose uploads a background worker processes with the real S3 function, so the
large-image flow (``POST /uploads`` -> upload -> ``GET /results/{id}``) works on one machine.

The server is for one person on localhost, but it still treats requests as untrusted: a bad
``Content-Length`` gets a 400, and the ``Host`` header the client sends is never used to build
URLs (the API function sees the server's own address).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .emulator import LocalAws, api_event, proxy_response_parts

API_REQUEST_LIMIT = 10 * 1024 * 1024  # API Gateway REST hard limit on request payloads


class LocalApi:
    """The API function behind a local HTTP server, with moto and a background S3 worker.

    ``with LocalApi(port=0) as api: api.url`` — used by :func:`serve` and by tests.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        worker_interval: float = 0.5,
        env_defaults: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ):
        self.host = host
        self.port = port
        self.worker_interval = worker_interval  # 0: no background worker (call process_uploads)
        self.aws = LocalAws(env_defaults=env_defaults, log_path=log_path)  # functions' output -> log_path
        self.httpd: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _invoke_api(self, event: dict) -> dict:
        return self.aws.invoke(self.api_function.lambda_handler, event, "anonymizer-api")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalApi:
        # The port first: a taken one fails fast (OSError), before moto starts or a function loads.
        self.httpd = ThreadingHTTPServer((self.host, self.port), _make_request_handler(self._invoke_api))
        self.port = self.httpd.server_address[1]
        try:
            self.aws.start()
            self.api_function = self.aws.load("api_anonymize")
            self.s3_function = self.aws.load("s3_anonymize")
        except BaseException:
            self.httpd.server_close()
            self.aws.stop()
            raise
        self._threads = [threading.Thread(target=self.httpd.serve_forever, name="local-api", daemon=True)]
        if self.worker_interval > 0:
            self._threads.append(threading.Thread(target=self._worker, name="local-s3-worker", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def _worker(self) -> None:
        while not self._stop.wait(self.worker_interval):
            try:
                self.aws.pump(self.s3_function.lambda_handler)
            except Exception as exc:  # noqa: BLE001 - keep serving; the function logged it
                print(f"local S3 worker: {exc!r}", file=sys.stderr)

    def process_uploads(self) -> list[dict]:
        """Run the S3 function on whatever is queued now (tests call this instead of waiting)."""
        return self.aws.pump(self.s3_function.lambda_handler)

    def stop(self) -> None:
        self._stop.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self.aws.stop()

    def __enter__(self) -> LocalApi:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _make_request_handler(api_handler: Callable[[dict], dict]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "anonymizer-local"

        def _handle(self) -> None:
            length, problem = _content_length(self.headers)
            if problem is not None:
                self._refuse(*problem)
                return
            data = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            event = api_event(
                self.command,
                url.path or "/",
                query=parse_qs(url.query, keep_blank_values=True),
                headers=_forwarded_headers(self.headers, self.server.server_address),
                body=data,
                source_ip=self.client_address[0],
            )
            response = api_handler(event)
            status, out_headers, body = proxy_response_parts(response)
            self._send(status, out_headers, body)

        def _refuse(self, status: int, code: str, message: str) -> None:
            """An error answer for a request whose body cannot be read safely; the connection closes."""
            self.close_connection = True
            body = json.dumps({"error": code, "message": message}).encode()
            self._send(status, [("Content-Type", "application/json"), ("Connection", "close")], body)

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in ("content-length", "connection"):
                    self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def _content_length(headers: Any) -> tuple[int, tuple[int, str, str] | None]:
    """The body's length, or the (status, code, message) to refuse the request with.

    Only a plain ``Content-Length`` of 0..10 MB is read: a chunked body, a negative or
    non-numeric length, or two different lengths could leave the server waiting on a body that
    never comes or reading into the next request.
    """
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        return 0, (411, "length_required", "send a Content-Length (chunked bodies are not accepted)")
    values = set(headers.get_all("Content-Length") or [])
    if not values:
        return 0, None
    raw = values.pop().strip()
    if values or not raw.isdigit():  # isdigit: no sign, no spaces, no "abc"
        return 0, (400, "bad_request", f"Content-Length must be one whole number of bytes; got {raw!r}")
    length = int(raw)
    if length > API_REQUEST_LIMIT:
        return 0, (413, "payload_too_large", "request over 10 MB: use POST /uploads")
    return length, None


def _forwarded_headers(headers: Any, server_address: tuple) -> dict[str, str]:
    """The request's headers as API Gateway would pass them, with ``Host`` set to this server.

    The API builds absolute URLs (``result.url``, ``Location``) from ``Host``; a client's forged
    ``Host`` (or ``X-Forwarded-*``) must not point another client at a server of its choosing.
    """
    out = {k: v for k, v in headers.items() if k.lower() not in ("host", "x-forwarded-proto", "x-forwarded-host")}
    host, port = server_address[0], server_address[1]
    out["Host"] = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    out["X-Forwarded-Proto"] = "http"
    return out


def serve(host: str = "127.0.0.1", port: int = 8080, log_path: Path | None = None) -> None:
    """Serve the API locally until Ctrl-C.

    ``POST /anonymize`` runs the real API function; ``POST /uploads`` hands out a presigned POST
    into a local moto S3 whose uploads a background worker processes with the real S3 function,
    so the large-image flow works end to end on one machine. The functions' own logs and
    metrics go to ``log_path`` (the terminal shows one line per request).
    """
    with LocalApi(host, port, log_path=log_path) as api:
        print(f"anonymizer API on {api.url} (S3/SQS/DynamoDB: moto on {api.aws.endpoint_url})")
        print(f"  the web page: open {api.url}/ in a browser")
        print(
            f"  curl --data-binary @face.jpg -H 'Content-Type: image/jpeg' "
            f"'{api.url}/anonymize?effect=pixelate' -o out.jpg"
        )
        print(f"  curl {api.url}/openapi.json      (big images: POST /uploads, see the README)")
        if log_path:
            print(f"  the functions' logs: {log_path}")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping")
