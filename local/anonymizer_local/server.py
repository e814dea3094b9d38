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
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .emulator import FakeLambdaContext, LocalAws, api_event, invoke_lock, load_function, proxy_response_parts

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
    ):
        self.host = host
        self.port = port
        self.worker_interval = worker_interval  # 0: no background worker (call process_uploads)
        self.aws = LocalAws(env_defaults=env_defaults)
        self.httpd: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalApi:
        self.aws.start()
        try:
            self.api_function = load_function("api_anonymize")
            self.s3_function = load_function("s3_anonymize")
            handler = _make_request_handler(self.api_function.lambda_handler)
            self.httpd = ThreadingHTTPServer((self.host, self.port), handler)
        except BaseException:
            self.aws.stop()
            raise
        self.port = self.httpd.server_address[1]
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


def _make_request_handler(api_handler: Callable[[dict, Any], dict]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "anonymizer-local"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > API_REQUEST_LIMIT:
                self.close_connection = True
                body = json.dumps({"error": "payload_too_large", "message": "request over 10 MB: use POST /uploads"})
                self._send(413, [("Content-Type", "application/json")], body.encode())
                return
            data = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            headers = {k: v for k, v in self.headers.items()}
            headers.setdefault("Host", f"{self.server.server_address[0]}:{self.server.server_address[1]}")
            headers["X-Forwarded-Proto"] = "http"
            event = api_event(
                self.command,
                url.path or "/",
                query=parse_qs(url.query, keep_blank_values=True),
                headers=headers,
                body=data,
                source_ip=self.client_address[0],
            )
            with invoke_lock:
                response = api_handler(event, FakeLambdaContext(function_name="anonymizer-api"))
            status, out_headers, body = proxy_response_parts(response)
            self._send(status, out_headers, body)

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in ("content-length", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def serve(host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the API locally until Ctrl-C.

    ``POST /anonymize`` runs the real API function; ``POST /uploads`` hands out presigned URLs
    into a local moto S3 whose uploads a background worker processes with the real S3 function,
    so the large-image flow works end to end on one machine.
    """
    with LocalApi(host, port, env_defaults={"POWERTOOLS_METRICS_DISABLED": "true"}) as api:
        print(f"anonymizer API on {api.url} (S3/SQS/DynamoDB: moto on {api.aws.endpoint_url})")
        print(
            f"  curl --data-binary @face.jpg -H 'Content-Type: image/jpeg' "
            f"'{api.url}/anonymize?effect=pixelate' -o out.jpg"
        )
        print(f"  curl {api.url}/openapi.json")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping")
