"""What every customer page shares, over real HTTP: headers, the friendly page, limits, logs."""

from __future__ import annotations

import logging
from datetime import date

import httpx

from flows.pages.site import MaskTokens
from tasks.links import Purpose, make_token


def test_a_wrong_token_gets_the_friendly_page_with_the_stores_contact(pages_edge):
    for path in ("/o/" + "A" * 48, "/o/short", "/f/" + "x" * 48, "/u/%00%ff"):
        answer = httpx.get(pages_edge.url + path, timeout=10)
        assert answer.status_code == 404, path
        assert "not valid any more" in answer.text and "care@northwind.example" in answer.text
        assert "Traceback" not in answer.text


def test_pages_send_the_security_headers_and_a_stylesheet(pages_edge):
    answer = httpx.get(pages_edge.url + "/o/" + "A" * 48, timeout=10)
    csp = answer.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert answer.headers["referrer-policy"] == "no-referrer"
    css = httpx.get(pages_edge.url + "/assets/site.css", timeout=10)
    assert css.status_code == 200 and "--primary: #1f4d3a" in css.text


def test_the_access_log_filter_keeps_only_a_token_prefix():
    """uvicorn's access records are (client, method, path, version, status)."""
    token = make_token("any-secret", Purpose.ORDER, 999_999, date(2026, 11, 18))
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d', ("1.2.3.4", "GET", f"/o/{token}?r=5",
                                                          "1.1", 200), None)
    MaskTokens().filter(record)
    assert token not in record.getMessage() and f"/o/{token[:6]}…" in record.getMessage()
