"""The web page as shipped and as the API function serves it (GET / and GET /options).

The page itself runs in a real browser in tests/e2e/test_web_page.py; here: what can be checked
without one, quickly: size, self-containment, the CSP and its hashes, the form's source.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from lambda_env import mock_lambda_env

from anonymizer import web
from anonymizer.aws import api_flow
from anonymizer.options import describe

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture(scope="module")
def api():
    """A warm API function under moto, uploads enabled, with a deployment default for faces."""
    from anonymizer_local.emulator import load_function

    with mock_lambda_env(OUTPUT_BUCKET="web-out", UPLOAD_BUCKET="web-in", ANONYMIZER_FACE_EFFECT="pixelate"):
        yield load_function("api_anonymize")


def call(api, path: str) -> dict:
    from anonymizer_local.emulator import FakeLambdaContext, api_event

    return api.lambda_handler(api_event("GET", path, headers={"Host": "example.test"}), FakeLambdaContext())


def header(response: dict, name: str) -> str:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(key.lower(), ", ".join(values))
    return headers.get(name.lower(), "")


def test_the_page_is_small_self_contained_and_shipped_with_the_package():
    html = web.page().html.decode("utf-8")
    assert len(web.page().html) < web.MAX_PAGE_BYTES
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"(?!data:)", html), "loads something from a URL"
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html), "names another host"
    assert "@import" not in html and "url(" not in html  # nothing fetched by CSS either
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch(f"web/{web.PAGE_FILE}", pattern) for pattern in package_data["anonymizer"])


def test_the_api_key_is_sent_as_a_header_and_kept_for_the_tab_only():
    js = web.page().html.decode("utf-8")
    assert 'setRequestHeader("x-api-key", apiKey)' in js
    assert "sessionStorage.setItem" in js and "localStorage" not in js
    assert not re.search(r"[?&](api_?key|x-api-key|key)=", js, re.I)  # never in a URL
    # only relative URLs for the page's own API: it works under a stage path (/v1/) and locally
    assert re.findall(r'call\("(?:GET|POST)", "([^"]+)"', js) and all(
        not u.startswith("/") for u in re.findall(r'call\("(?:GET|POST)", "([^"]+)"', js)
    )


def test_the_csp_allows_exactly_the_pages_inline_code():
    page = web.page()
    html = page.html
    scripts = re.findall(rb"<script>(.*?)</script>", html, re.S)
    styles = re.findall(rb"<style>(.*?)</style>", html, re.S)
    assert len(scripts) == 1 and len(styles) == 1
    markup = re.sub(rb"<(script|style)>.*?</\1>", b"", html, flags=re.S)
    assert b"<script" not in markup and not re.search(rb"\son[a-z]+=", markup)  # no other code, no handlers
    assert not re.search(rb"\sstyle=", markup)  # style attributes would need 'unsafe-inline'

    def digest(block: bytes) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(block).digest()).decode() + "'"

    policy = dict(
        part.strip().split(" ", 1) for part in web.content_security_policy(["https://b.s3.amazonaws.com"]).split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == digest(scripts[0])
    assert policy["style-src"] == digest(styles[0])
    assert policy["connect-src"] == "'self' https://b.s3.amazonaws.com"
    assert policy["frame-ancestors"] == "'none'" and policy["form-action"] == "'none'"
    assert "unsafe" not in web.content_security_policy()


def test_get_root_serves_the_page_with_its_policy_and_the_s3_origins_of_presigned_urls(api):
    response = call(api, "/")
    assert response["statusCode"] == 200
    assert header(response, "content-type").startswith("text/html")
    assert response["body"] == web.page().html.decode("utf-8")
    policy = header(response, "content-security-policy")
    connect = next(p for p in policy.split(";") if p.strip().startswith("connect-src")).split()[1:]
    assert connect[0] == "'self'" and len(connect) >= 2
    assert all(re.fullmatch(r"https://[a-z0-9.-]*amazonaws\.com", origin) for origin in connect[1:]), connect
    assert header(response, "x-content-type-options") == "nosniff"


def test_get_options_is_the_option_table_as_this_deployment_applies_it(api):
    response = call(api, "/options")
    assert response["statusCode"] == 200
    doc = json.loads(response["body"])
    table = {o["key"]: o for o in describe() if not o["deployment_only"]}
    assert [o["key"] for o in doc["options"]] == list(table)  # every request option, no deployment-only one
    effect = next(o for o in doc["options"] if o["key"] == "effect")
    assert effect["default"]["face"] == "pixelate"  # ANONYMIZER_FACE_EFFECT reaches the form
    assert "logo" not in effect["choices"]  # the API takes no logo file
    assert {"blur", "pixelate", "fill", "deform"} <= set(effect["choices"])
    for key in ("strength", "blocks", "threshold"):
        assert (doc_row := next(o for o in doc["options"] if o["key"] == key))["min"] == table[key]["min"]
        assert doc_row["max"] == table[key]["max"]
    limits = doc["limits"]
    assert limits["uploads"] is True
    assert 0 < limits["sync_bytes"] < api_flow.SYNC_PAYLOAD_LIMIT < limits["upload_bytes"]
    assert "image/jpeg" in doc["accept"] and doc["targets"] == ["face", "plate"]


def test_without_upload_buckets_the_page_connects_only_to_its_own_api():
    config = api_flow.ApiConfig()
    assert api_flow.options_document(config)["limits"]["uploads"] is False
    response = api_flow.page_response(storage=None, config=config)  # type: ignore[arg-type]
    policy = response.headers["Content-Security-Policy"]
    assert "connect-src 'self';" in policy


def test_the_local_buckets_answer_the_browser_as_the_deployed_ones():
    """The page's big-image flow runs locally only if moto's buckets have the template's CORS rules."""
    from cfnlint.decode import decode_str

    from anonymizer_local.emulator import LocalAwsNames, web_cors_rules

    tpl, problems = decode_str((ROOT / "template.yaml").read_text())
    assert not problems
    names = LocalAwsNames()
    local = web_cors_rules(names)
    for resource, bucket in (("InputBucket", names.input_bucket), ("OutputBucket", names.output_bucket)):
        deployed = tpl["Resources"][resource]["Properties"]["CorsConfiguration"]["CorsRules"]
        as_boto3 = [{("MaxAgeSeconds" if k == "MaxAge" else k): v for k, v in rule.items()} for rule in deployed]
        assert as_boto3 == local[bucket], resource


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_contrast():
    css = re.search(r":root \{(.*?)\}", web.page().html.decode("utf-8"), re.S).group(1)
    colour = dict(re.findall(r"--([a-z-]+): (#[0-9a-f]{6})", css))
    pairs = [
        ("fg", "bg"), ("fg", "panel"), ("muted", "bg"), ("muted", "panel"), ("accent", "bg"),
        ("accent-fg", "accent"), ("error", "bg"), ("ok", "bg"),
    ]  # fmt: skip
    low = {f"{a} on {b}": round(contrast(colour[a], colour[b]), 2) for a, b in pairs}
    assert all(ratio >= 4.5 for ratio in low.values()), low


def test_the_openapi_document_lists_the_page_and_its_form_without_a_key():
    doc = api_flow.openapi_document("https://x")
    for path in ("/", "/options"):
        assert doc["paths"][path]["get"]["security"] == []  # as template.yaml declares them
