"""The lineage page in a real browser (Debian's chromium, headless, driven by Playwright)
against a real demo server: search, upstream and downstream drawing, the side panel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.support import ServerProcess, http_get, http_post, wait_until

CHROMIUM = "/usr/bin/chromium"  # Debian's package (Makefile DEB_PACKAGES), not a downloaded build


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("lineage-demo")
    proc = ServerProcess(["--demo", "--data-dir", str(work / "data")], log_path=work / "server.log")
    proc.start(timeout=120)
    yield proc
    proc.stop()


def gql(server: ServerProcess, query: str) -> dict[str, Any]:
    _, raw, _ = http_post(server.url + "/graphql", json.dumps({"query": query}).encode())
    doc: dict[str, Any] = json.loads(raw)
    return doc


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[Page, list[str]]]:
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 860})
        pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: problems.append(str(e)))
        yield pg, problems
        browser.close()


def drawn(pg: Page) -> list[str]:
    ids: list[str] = pg.evaluate("() => window.lineage.cy.nodes().map(n => n.id())")
    return ids


def search_and_pick(pg: Page, text: str) -> None:
    pg.fill("#search", text)
    pg.wait_for_selector(f'#results li[data-id="feature:{text}"]')
    pg.press("#search", "Enter")


def test_the_page_and_its_script_are_served_from_the_package(demo: ServerProcess) -> None:
    status, body = http_get(demo.url + "/lineage")
    assert status == 200 and b"/lineage/vendor/cytoscape.min.js" in body and b"https://" not in body
    status, js = http_get(demo.url + "/lineage/vendor/cytoscape.min.js")
    assert status == 200 and len(js) > 100_000
    assert http_get(demo.url + "/lineage/no-such.js")[0] == 404


def test_search_draws_upstream_to_the_warehouse_and_downstream_to_the_service(
    demo: ServerProcess, page: tuple[Page, list[str]], tmp_path: Path
) -> None:
    pg, problems = page
    for _ in range(3):
        status, _ = demo.join({"entities": {"user_id": [17, 4242]}, "features": ["user_profile:age"]})
        assert status == 200

    def served() -> bool:
        doc = gql(demo, '{ feature(id: "user_profile:age") { servedBy { count } } }')
        return bool(doc["data"]["feature"]["servedBy"])

    wait_until(served, 15, "the joins' lineage in the graph", interval=0.2)

    pg.goto(demo.url + "/lineage")
    pg.select_option("#direction", "UPSTREAM")
    search_and_pick(pg, "user_profile:age")
    pg.wait_for_function("() => window.lineage.cy.getElementById('table:warehouse.users').length === 1")
    up = drawn(pg)
    assert {"feature:user_profile:age", "view:user_profile", "table:warehouse.users"} <= set(up)
    assert "service:ranker_v1" not in up
    # the side panel: the feature's facts and what served it
    pg.wait_for_selector("#served td")
    panel = pg.inner_text("#panel")
    assert "Age in years" in panel and "growth-data@example.com" in panel and "int64" in panel
    served_by = pg.inner_text("#served")
    assert "featurestore@" in served_by

    pg.select_option("#direction", "DOWNSTREAM")
    pg.wait_for_function("() => window.lineage.cy.getElementById('service:ranker_v1').length === 1")
    down = drawn(pg)
    assert "table:warehouse.users" not in down and any(n.startswith("server:featurestore@") for n in down)

    # clicking a node recenters on it
    pg.evaluate("() => window.lineage.cy.getElementById('service:ranker_v1').emit('tap')")
    pg.wait_for_function("() => document.getElementById('panel').dataset.node === 'service:ranker_v1'")
    assert "ranking@example.com" in pg.inner_text("#panel")

    shot = tmp_path / "lineage.png"
    pg.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
    assert problems == []


def test_a_materialized_view_shows_its_data_version_and_run(
    demo: ServerProcess, page: tuple[Page, list[str]]
) -> None:
    pg, problems = page
    pg.goto(demo.url + "/lineage?root=user_transactions:txn_count_90d")
    pg.wait_for_function(
        "() => document.getElementById('panel').innerText.includes('materialize:user_transactions')"
    )
    panel = pg.inner_text("#panel")
    assert "user_transactions@1" in panel and "COMPLETE" in panel
    pg.select_option("#depth", "4")
    pg.select_option("#direction", "UPSTREAM")
    pg.wait_for_function("() => window.lineage.cy.nodes('[kind = \"run\"]').length === 1")
    assert "data_version:user_transactions@1" in drawn(pg)
    assert problems == []


def test_graph_and_changes_over_graphql_on_the_demo(demo: ServerProcess) -> None:
    doc = gql(
        demo,
        '{ g: graph(root: "user_transactions:txn_count_90d", direction: UPSTREAM, depth: 4) {'
        "    nodes { id kind label attributes } edges { source target kind } }"
        '  none: graph(root: "feature:no:such") { nodes { id } }'
        '  past: graph(root: "user_profile:age", asOf: "2001-01-01T00:00:00Z") { nodes { id } edges { kind } }'
        '  f: feature(id: "user_transactions:txn_count_90d") { changes(since: "2001-01-01T00:00:00Z") {'
        "    at kind dataVersion job runId rows } }"
        '  later: feature(id: "user_transactions:txn_count_90d") { changes(since: "2999-01-01T00:00:00Z") { runId } }'
        ' s: search(text: "ranker") { id kind } }',
    )
    assert "errors" not in doc, doc
    data = doc["data"]
    kinds = {n["kind"] for n in data["g"]["nodes"]}
    assert {"feature", "view", "table", "data_version", "run"} <= kinds
    assert {"source": "view:user_transactions", "target": "feature:user_transactions:txn_count_90d",
            "kind": "CONTAINS"} in data["g"]["edges"]  # fmt: skip
    assert data["none"] is None
    assert data["past"] is None  # before any definition, as feature(asOf) answers
    [change] = data["f"]["changes"]
    assert change["kind"] == "data_version" and change["dataVersion"] == "user_transactions@1"
    assert change["job"] == "materialize:user_transactions" and change["rows"] > 0
    assert data["later"]["changes"] == []
    assert [n["id"] for n in data["s"]] == ["service:ranker_v1", "service:ranker_v2"]


def test_bad_graph_arguments_are_graphql_errors(demo: ServerProcess) -> None:
    for query, needle in [
        ('{ graph(root: "user_profile:age", depth: 9) { nodes { id } } }', "depth must be between 1 and 5"),
        ('{ node(id: "nothing") { id } }', "is not 'kind:name'"),
        ('{ search(text: "a", limit: 0) { id } }', "limit must be between 1 and 100"),
        ('{ feature(id: "user_profile:age") { changes(limit: 0) { runId } } }', "limit must be between"),
    ]:
        status, raw, _ = http_post(demo.url + "/graphql", json.dumps({"query": query}).encode())
        doc = json.loads(raw)
        assert status == 200 and needle in doc["errors"][0]["message"], (query, doc)


def test_with_tokens_on_the_page_loads_open_and_its_queries_carry_the_token_entered(
    tmp_path: Path, page: tuple[Page, list[str]]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("page-admin-token admin\n")
    proc = ServerProcess(
        ["--demo", "--data-dir", str(tmp_path / "data")],
        {"FEATURESTORE_AUTH__TOKENS_FILE": str(tokens)},
        tmp_path / "server.log",
    )
    proc.start(timeout=120)
    try:
        pg, problems = page
        answers = [None, "page-admin-token"]  # first cancel the prompt, then enter the token
        pg.on("dialog", lambda d: d.dismiss() if answers.pop(0) is None else d.accept("page-admin-token"))
        pg.goto(proc.url + "/lineage?root=user_profile:age")
        pg.wait_for_function("() => document.getElementById('status').className === 'error'")
        assert pg.text_content("#status").startswith("401 UNAUTHENTICATED: ")  # type: ignore[union-attr]
        pg.evaluate("() => window.lineage.draw()")
        pg.wait_for_function("() => window.lineage.cy.nodes().length > 0")
        assert "feature:user_profile:age" in drawn(pg)
        assert answers == []  # asked once per refused request, then the token is kept
        assert not [p for p in problems if "401" not in p]  # the browser logs each 401 itself
    finally:
        proc.stop()
