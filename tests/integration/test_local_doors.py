"""The local doors as a user meets them: ``anonymize serve`` and ``anonymize local-run`` on moto's
real HTTP server with the real functions (issue 15's defects, each a regression test)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from anonymizer_local.cli import EXIT_FAILED, EXIT_OK, main
from anonymizer_local.server import LocalApi

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path):
    """A local API on a fresh moto account; the functions' output goes to a log file."""
    with LocalApi(port=0, worker_interval=0, log_path=tmp_path / "serve.log") as server:
        yield server


def _raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are (requests would fix a bad header) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", " 12 x"])
def test_a_bad_content_length_gets_400_and_the_server_stays_up(api, length):
    answer = _raw(api.port, f"POST /anonymize HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
    assert json.loads(body)["error"] == "bad_request" and "Content-Length" in json.loads(body)["message"]
    assert requests.get(api.url + "/openapi.json", timeout=10).status_code == 200


def test_a_chunked_body_is_refused_not_waited_for(api):
    answer = _raw(api.port, b"POST /anonymize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ")


def test_a_forged_host_never_reaches_the_urls_the_api_hands_out(api, engine):
    headers = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    answer = requests.post(api.url + "/uploads", headers=headers, timeout=10)
    assert answer.status_code == 201, answer.text
    assert answer.headers["Location"].startswith(api.url + "/results/")
    assert answer.json()["result"]["url"].startswith(api.url + "/results/")
    assert "evil" not in answer.text


def test_the_documented_upload_flow_works_with_curl(api, engine, astronaut_jpeg, tmp_path, capfd):
    """README: POST /uploads, then `curl -F` each field and the file, then GET /results/{id}."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    image = tmp_path / "big.jpg"
    image.write_bytes(astronaut_jpeg)
    upload = requests.post(api.url + "/uploads?effect=pixelate", timeout=10).json()
    form = [arg for name, value in upload["upload"]["fields"].items() for arg in ("-F", f"{name}={value}")]
    sent = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}", *form, "-F", f"file=@{image}",
         upload["upload"]["url"]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0 and sent.stdout in ("200", "201", "204"), sent
    api.process_uploads()
    result = requests.get(upload["result"]["url"], timeout=10)
    assert result.status_code == 200 and result.json()["status"] == "done", result.text
    picture = requests.get(result.json()["image"]["url"], timeout=10)
    assert picture.status_code == 200 and picture.content[:3] == b"\xff\xd8\xff" and picture.content != astronaut_jpeg
    shown = "".join(capfd.readouterr())
    assert '{"_aws"' not in shown and "UserWarning" not in shown and '"level"' not in shown
    assert api.aws.output.path.read_text()  # kept in the log instead


def test_serve_on_a_taken_port_is_one_line_and_exit_1(capfd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == EXIT_FAILED
    err = capfd.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_local_run_keeps_the_terminal_for_the_user(astronaut_jpeg, tmp_path):
    """A fresh process, as a user runs it: the function's JSON logs, metrics and warnings go to
    OUTDIR/local-run.log; the terminal shows a line per image and the closing summary."""
    inputs = tmp_path / "in"
    (inputs / "a").mkdir(parents=True)
    (inputs / "b").mkdir()
    (inputs / "a" / "p.jpg").write_bytes(astronaut_jpeg)
    (inputs / "b" / "p.jpg").write_bytes(astronaut_jpeg)
    (inputs / "a" / "Sky.JPG").write_bytes(_blank_jpeg())
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "ANONYMIZER_"))}
    run = subprocess.run(
        [sys.executable, "-m", "anonymizer_local.cli", "local-run", str(inputs / "a"), str(inputs / "b"),
         "-o", str(out), "--set", "targets=face"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == EXIT_OK, run.stderr
    shown = run.stdout + run.stderr
    assert '{"_aws"' not in shown and "UserWarning" not in shown and '"level"' not in shown, shown
    assert "3 anonymized, 0 failed" in shown and "found 2 face(s)" in shown, shown
    assert "nothing found in 1 image(s): Sky.JPG" in shown, shown
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["1/p.jpg", "p.jpg"]
    assert (out / "Sky.JPG").is_file()  # the file name's case is kept
    log = (out / "local-run.log").read_text()
    assert "object done" in log and '"_aws"' in log  # kept, out of the way


def _blank_jpeg() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".jpg", np.full((120, 160, 3), 200, np.uint8))[1].tobytes()


def test_local_run_refuses_missing_inputs_before_starting(tmp_path: Path, capfd):
    assert main(["local-run", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err
