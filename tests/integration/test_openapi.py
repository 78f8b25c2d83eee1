"""The OpenAPI document tells the truth: schemathesis (every check) against a real server
finds nothing beyond the deliberate differences listed here, each with its reason; and
the document's details that were once wrong stay right (/metrics is text, a 405 names
the allowed methods, the join refuses what its schema refuses)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, http_get, http_post

# (operation, schemathesis code) -> why the server differs from the document on purpose.
DELIBERATE = {
    ("POST /v1/feature/join", "ST202"): "a body valid by the schema can still name an entity this "
    "registry does not have, a key of the wrong type for its entity, columns of different lengths "
    "(400) or more rows than limits.max_rows (413): the registry decides, not the schema",
    ("POST /v1/feature/push", "ST202"): "a push carries exactly the columns of its view (entity keys, "
    "every feature, optionally event_timestamp): a column the view lacks is a 400 naming it",
}
# The join ignores HTTP headers it does not know, as RFC 9110 (section 5.1) asks; schemathesis
# counts an unknown header as "schema-violating data accepted". Only that component is
# exempt: a body the schema refuses must be refused.
UNKNOWN_HEADER = "Invalid component: in header - object with unexpected properties"

EXAMPLES = 100  # per operation and phase: ~300 cases, a few seconds
RUN_GUARD = 300  # seconds; only turns a hang into a failure


@pytest.fixture(scope="module")
def own_server(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: schemathesis pushes rows, which the shared server's readers
    must not see."""
    work = tmp_path_factory.mktemp("openapi")
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        "limits: {max_rows: 1000, max_body_bytes: 262144, deadline_ms: 2000}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=work / "server.log"
    ).start()
    yield proc
    proc.stop()


def failures(junit: Path) -> list[tuple[str, str, str]]:
    """(operation, code, the failing case's text) for every check that failed."""
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for failure in case.iter("failure"):
            for text in re.split(r"\n(?=\d+\. Test Case ID)", failure.text or ""):
                for code in re.findall(r"^- (ST\d+) ", text, re.MULTILINE):
                    found.append((case.attrib["name"], code, text))
    return found


# A join whose deadline (the header allows 1 ms) is shorter than the event loop's standing
# lag is shed at its start, before its body is read: 503, reason "deadline" (docs/api.md,
# "Overload"; only joins are shed). A join let in whose deadline passes before a store is
# read, or a push whose store has not confirmed the write by then, is the documented 504
# DEADLINE_EXCEEDED. schemathesis sends such deadlines and counts any 5xx as a server error;
# on a loaded machine (a suite in two processes on 2 cores: CI's run of 12-06 met a 504 at
# 1 ms) tens of milliseconds can pass before the first read. A deadline of 100 ms or more
# that ends in a 504 is still reported: a memory store answers well within it.
SHED_FOR_DEADLINE = re.compile(r"\[503\] Service Unavailable:.*?\"reason\":\"deadline\"", re.DOTALL)
DEADLINE_PASSED = re.compile(r"\[504\] Gateway Timeout:.*?\"code\":\"DEADLINE_EXCEEDED\"", re.DOTALL)
SHORT_DEADLINE = re.compile(r"x-featurestore-deadline-ms: \d{1,2}'")
JOIN, PUSH = "POST /v1/feature/join", "POST /v1/feature/push"


def deliberate(operation: str, code: str, text: str) -> bool:
    if code == "ST101" and operation in (JOIN, PUSH) and SHORT_DEADLINE.search(text):
        shed = operation == JOIN and SHED_FOR_DEADLINE.search(text)
        return bool(shed or DEADLINE_PASSED.search(text))
    if code == "ST201" and operation == "POST /v1/feature/join":
        return UNKNOWN_HEADER in text
    return (operation, code) in DELIBERATE


def test_schemathesis_finds_only_the_deliberate_differences(
    own_server: ServerProcess, tmp_path: Path
) -> None:
    junit = tmp_path / "junit.xml"
    run = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", own_server.url + "/openapi.json",
            "--checks", "all", "--max-examples", str(EXAMPLES), "--no-color",
            "--generation-database", "none", "--report", "junit", "--report-junit-path", str(junit),
        ],
        cwd=tmp_path,  # its cache (.schemathesis/) goes there, not into the work tree
        capture_output=True, text=True, timeout=RUN_GUARD, check=False,
    )  # fmt: skip
    assert junit.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    unexpected = [(op, code, text) for op, code, text in failures(junit) if not deliberate(op, code, text)]
    assert not unexpected, "\n\n".join(text for _, _, text in unexpected) + "\n" + run.stdout[-1500:]
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested is not None and int(tested.group(1)) >= 6, run.stdout[-3000:]


def ci_case(deadline_ms: int, status: str = "[504] Gateway Timeout", body: str = "") -> str:
    """A failing case's text as schemathesis printed it in CI on 12-06, with its deadline."""
    body = body or (
        '{"error":{"code":"DEADLINE_EXCEEDED","message":"the request deadline passed before any '
        'store was read","details":[]}}'
    )
    return (
        f"- ST101 Server error\n\n{status}:\n\n    `{body}`\n\nReproduce with:\n\n    curl -X POST "
        f"-H 'x-featurestore-deadline-ms: {deadline_ms}' -H 'Content-Type: application/json'"
    )


SHED = '{"error":{"code":"UNAVAILABLE","message":"overloaded","details":[{"reason":"deadline"}]}}'


@pytest.mark.parametrize("operation", [JOIN, PUSH])
@pytest.mark.parametrize("deadline_ms", [1, 99])
def test_a_504_for_a_deadline_under_100_ms_is_deliberate(operation: str, deadline_ms: int) -> None:
    assert deliberate(operation, "ST101", ci_case(deadline_ms))


def test_a_503_shed_for_its_deadline_is_deliberate_for_a_join_only() -> None:
    assert deliberate(JOIN, "ST101", ci_case(1, "[503] Service Unavailable", SHED))
    assert not deliberate(PUSH, "ST101", ci_case(1, "[503] Service Unavailable", SHED))


def test_a_504_for_a_longer_deadline_another_5xx_or_another_operation_is_not() -> None:
    assert not deliberate(JOIN, "ST101", ci_case(100))
    assert not deliberate(JOIN, "ST101", ci_case(1, "[500] Internal Server Error"))
    assert not deliberate("GET /v1/registry", "ST101", ci_case(1))


def test_metrics_are_documented_as_prometheus_text(server: ServerProcess) -> None:
    spec = json.loads(http_get(server.url + "/openapi.json")[1])
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    status, _ = http_get(server.url + "/metrics")
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/feature/join", "POST"),
        ("PUT", "/v1/feature/push", "POST"),
        ("POST", "/v1/registry", "GET"),
        ("PATCH", "/healthz", "GET"),
        ("DELETE", "/readyz", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
def test_a_405_names_the_allowed_methods(server: ServerProcess, method: str, path: str, allow: str) -> None:
    req = urllib.request.Request(server.url + path, method=method)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 405
    assert info.value.headers["allow"] == allow
    assert json.loads(info.value.read())["error"]["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"entities": {"user_id": [1]}, "features": [""]}, "$.features[0]"),
        ({"entities": {"user_id": [1]}, "feature_service": ""}, "$.feature_service"),
        ({"entities": {}, "features": ["user_profile:age"]}, "$.entities"),
    ],
)
def test_the_join_refuses_what_its_schema_refuses(server: ServerProcess, body: object, needle: str) -> None:
    status, raw, _ = http_post(server.url + "/v1/feature/join", json.dumps(body).encode())
    assert status == 400 and needle in json.loads(raw)["error"]["message"]


def test_a_push_without_feature_columns_is_refused_as_its_schema_says(server: ServerProcess) -> None:
    spec = json.loads(http_get(server.url + "/openapi.json")[1])
    schema = spec["paths"]["/v1/feature/push"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["rows"]["minProperties"] == 2
    body = {"feature_view": "merchant", "rows": {"merchant_id": ["m-1"]}}
    status, raw, _ = http_post(server.url + "/v1/feature/push", json.dumps(body).encode())
    assert status == 400 and "$.rows" in json.loads(raw)["error"]["message"]
