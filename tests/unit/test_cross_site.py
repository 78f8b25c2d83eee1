"""The rules of featurestore/api/cross_site.py on header values alone (the server's
answers: tests/integration/test_cross_site.py)."""

from __future__ import annotations

import pytest

from featurestore.api.cross_site import content_type_refused, origin_refused


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").encode(), value.encode("latin-1")) for name, value in values.items()]


@pytest.mark.parametrize(
    "given",
    [
        {"host": "127.0.0.1:8080"},  # no Origin: not a browser
        {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"},
        {"host": "LocalHost:8080", "origin": "http://localhost:8080"},
        {"host": "[::1]:8080", "origin": "http://[::1]:8080"},
        {"host": "features.example.com", "origin": "https://features.example.com"},
        {
            "host": "fs:8080",
            "x_forwarded_host": "a.example, features.example.com",
            "origin": "https://a.example",
        },
        # a port left out is the scheme's, on either side (review s58 round 2: a proxy's
        # "Host $host:$server_port" refused same-origin pushes), one spelling of IPv6
        {"host": "fs.example.com:443", "origin": "https://fs.example.com"},
        {"host": "fs.example.com:80", "origin": "http://fs.example.com"},
        {"host": "fs.example.com", "origin": "http://fs.example.com:80"},
        {
            "host": "backend:8080",
            "x_forwarded_host": "fs.example.com:443",
            "origin": "https://fs.example.com",
        },
        {"host": "[::1]:18611", "origin": "http://[0:0:0:0:0:0:0:1]:18611"},
    ],
)
def test_no_origin_or_the_servers_own_is_not_refused(given: dict[str, str]) -> None:
    assert origin_refused(headers(**given), "/v1/feature/push") is None


@pytest.mark.parametrize(
    "given",
    [
        {"host": "127.0.0.1:8080", "origin": "http://evil.example"},
        {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8081"},
        {"host": "127.0.0.1:8080", "origin": "null"},
        {"host": "127.0.0.1:8080", "origin": "127.0.0.1:8080"},  # no scheme: not an origin
        {"origin": "http://127.0.0.1:8080"},  # no Host to compare with (HTTP/1.0)
        {"host": "a.example", "x_forwarded_host": "b.example", "origin": "http://c.example"},
        {"host": "fs.example.com:443", "origin": "http://fs.example.com"},  # http's port is 80
        {"host": "fs.example.com", "origin": "https://fs.example.com:8443"},
        {"host": "[::1]:8080", "origin": "http://[::2]:8080"},
        {"host": "[::1:8080", "origin": "http://[::1]:8080"},  # unreadable Host
        {"host": "a.example:x", "origin": "http://a.example"},
        # ports int() refuses although str.isdigit() takes them (review s58 round 3 #1: a 500)
        {"host": "127.0.0.1", "origin": "http://127.0.0.1:\xb2"},
        {"host": "fs.example.com:\xb9", "origin": "http://fs.example.com"},
        {"host": "127.0.0.1:" + "1" * 5000, "origin": "http://127.0.0.1:" + "1" * 5000},
    ],
)
def test_another_origin_is_refused_naming_the_rule(given: dict[str, str]) -> None:
    refused = origin_refused(headers(**given), "/v1/feature/push")
    assert refused is not None and refused.details[0]["reason"] == "cross_site"
    assert refused.message.startswith("cross-site request refused: Origin ")


def test_a_second_origin_of_another_site_is_refused() -> None:
    given = [(b"host", b"a.example"), (b"origin", b"http://a.example"), (b"origin", b"http://evil.example")]
    assert origin_refused(given, "/v1/feature/push") is not None


def test_json_with_parameters_or_no_type_is_taken_and_others_are_415() -> None:
    assert content_type_refused([], "/p") is None
    assert content_type_refused(["application/json"], "/p") is None
    assert content_type_refused([" APPLICATION/JSON ; charset=utf-8"], "/p") is None
    refused = content_type_refused(["application/json", "text/plain"], "/p")
    assert refused is not None and refused.http_status == 415
    assert refused.details == [{"content_type": "text/plain", "expected": "application/json"}]
    long = content_type_refused(["x" * 500], "/p")
    assert long is not None and len(long.message) < 400  # a long value is clipped
