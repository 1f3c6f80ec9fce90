"""URLs written to logs, statuses and Events lose what may be a secret (issue 20 item 5)."""

from __future__ import annotations

import pytest

from editflow.core.urlguard import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://qyapi.example.com/cgi-bin/webhook/send?key=abc123",
            "https://qyapi.example.com/cgi-bin/webhook/send?…",
        ),
        ("https://user:pass@oa.example.com:8443/cb#frag", "https://oa.example.com:8443/cb"),
        ("http://[::1]:9000/b/k.png?X-Amz-Signature=x", "http://[::1]:9000/b/k.png?…"),
        ("https://oa.example.com/plain", "https://oa.example.com/plain"),
        ("http://[bad", "(malformed URL)"),
    ],
)
def test_a_url_keeps_its_endpoint_and_loses_its_secrets(url: str, shown: str) -> None:
    assert redacted(url) == shown
