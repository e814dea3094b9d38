"""The web page for people without a terminal: one self-contained HTML file and its CSP.

``index.html`` carries its CSS and JavaScript inline (no CDN, no build step) and is served by the
API function at ``GET /``. Inline code is allowed by the Content-Security-Policy only through the
sha256 of each ``<script>``/``<style>`` block, computed here from the file itself, so the header
can never go stale when the page changes and nothing injected into the page could run.

The page reads its form (fields, defaults, ranges) from ``GET /options`` and talks only to its own
API, plus the S3 origins of the presigned upload/result URLs that API hands out.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

PAGE_FILE = "index.html"
MAX_PAGE_BYTES = 100 * 1024  # the page ships in the Lambda layer and loads on phones
HTML = "text/html; charset=utf-8"
_BLOCKS = {"script": re.compile(rb"<script>(.*?)</script>", re.S), "style": re.compile(rb"<style>(.*?)</style>", re.S)}


@dataclass(frozen=True)
class Page:
    html: bytes
    script_hashes: tuple[str, ...]  # CSP source expressions: 'sha256-...'
    style_hashes: tuple[str, ...]


def _csp_hash(block: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block).digest()).decode() + "'"


@cache
def page() -> Page:
    """The page as shipped in the package, with the hashes of its inline blocks."""
    html = resources.files(__name__).joinpath(PAGE_FILE).read_bytes()
    return Page(
        html=html,
        script_hashes=tuple(_csp_hash(b) for b in _BLOCKS["script"].findall(html)),
        style_hashes=tuple(_csp_hash(b) for b in _BLOCKS["style"].findall(html)),
    )


def content_security_policy(connect_origins: Iterable[str] = ()) -> str:
    """A strict policy: only the page's own hashed code runs, it connects only to its own API
    (and the given origins: the S3 endpoints of presigned URLs), loads nothing from elsewhere,
    cannot be framed and submits no forms."""
    p = page()
    connect = " ".join(["'self'", *sorted(set(connect_origins))])
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(p.script_hashes)}",
            f"style-src {' '.join(p.style_hashes)}",
            "img-src 'self' blob: data:",
            "media-src 'self' blob:",  # video results, once the API returns them (issue 8)
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(connect_origins: Iterable[str] = ()) -> dict[str, str]:
    """Headers for ``GET /``: the CSP plus the usual hardening (no sniffing, no referrer)."""
    return {
        "Content-Security-Policy": content_security_policy(connect_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }
