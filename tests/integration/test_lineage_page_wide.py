"""The lineage page in a real browser (Debian's chromium, headless, Playwright) over an
in-process graph served by uvicorn (review s58 #4, #5, #6, #10): a node with more
neighbours than a walk draws says how many are left out, Enter draws what is typed unless
the list shown was built for it, and a view without a data version is explained by its
store. The browser fixture is test_lineage_page.py's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from lineage.events import LineageEvent
from lineage.graph.base import DefinitionFacts, FeatureInfo
from lineage.graph.memory import InMemoryGraph
from tests.contract.test_lineage_graph_truncation import wide
from tests.integration import test_lineage_page as pages
from tests.integration.test_lineage_page_races import page_site

page = pages.page  # the fixture: a browser page

SERVED = 150  # wide:f0000.. served by one server


def served(fid: str, table: str, second: int, server: str = "fs@pod") -> LineageEvent:
    return LineageEvent(
        feature_id=fid, feature_version=1, source_table=table,
        timestamp=f"2024-01-01T00:{second // 60:02d}:{second % 60:02d}Z", upstream_deps=[],
        registry_version=1, served_count=1, trace_ids=[], service=server,
    )  # fmt: skip


async def fill(graph: InMemoryGraph) -> None:
    await graph.apply_definitions(wide())
    prof, txn = (
        FeatureInfo("prof:age", "prof", "int64", 1, (1,)),
        FeatureInfo("txn:amount", "txn", "float64", 1, (1,)),
    )
    await graph.apply_definitions(
        DefinitionFacts(
            project="q", valid_from_ms=0, registry_version=1, views=("prof", "txn"), services=(),
            features=(prof, txn), contains=(("prof", prof.id), ("txn", txn.id)), uses=(), derived_from=(),
        )
    )  # fmt: skip
    await graph.write_events(
        [served(f"wide:f{i:04d}", "redis://fs/p/wide", i) for i in range(SERVED)]
        + [
            served("prof:age", "memory://local/prof", 1, "fs@b"),
            served("txn:amount", "clickhouse://a.txn", 1, "fs@b"),
        ]
    )


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The page and GraphQL over the graph ``fill`` makes: its base url."""
    graph = InMemoryGraph()
    asyncio.run(fill(graph))
    with page_site(graph) as url:
        yield url


def status_of(pg: Page, around: str) -> str:
    pg.wait_for_function(f"() => document.getElementById('status').innerText.includes('around {around}')")
    return pg.inner_text("#status")


def test_a_table_of_1500_features_is_drawn_at_depth_1_with_the_1400_left_out_on_the_status_line(
    site: str, page: tuple[Page, list[str]]
) -> None:
    pg, problems = page
    pg.goto(site + "/lineage")
    pg.select_option("#direction", "DOWNSTREAM")
    pg.select_option("#depth", "1")
    pg.evaluate("() => window.lineage.select('table:warehouse.wide')")
    line = status_of(pg, "table:warehouse.wide")
    assert line.startswith("101 nodes, 100 edges around table:warehouse.wide"), line
    assert "1,400 more PRODUCED_BY of table:warehouse.wide not drawn (100 drawn)" in line, line
    assert len(pages.drawn(pg)) == 101
    assert problems == []


def test_a_server_node_says_how_many_of_the_features_it_served_are_not_drawn(
    site: str, page: tuple[Page, list[str]]
) -> None:
    pg, problems = page
    pg.goto(site + "/lineage?root=wide:f0149")
    status_of(pg, "feature:wide:f0149")
    pg.evaluate("() => window.lineage.cy.getElementById('server:fs@pod').emit('tap')")
    line = status_of(pg, "server:fs@pod")
    assert "50 more SERVED_BY of server:fs@pod not drawn (100 drawn)" in line, line
    assert problems == []


def test_enter_draws_the_typed_text_when_the_list_shown_is_an_older_texts_or_hidden(
    site: str, page: tuple[Page, list[str]]
) -> None:
    """Review s58 #5: with the list of `prof:age` shown, typing `txn:amount` and pressing
    Enter (before its own search answered) drew prof:age; after Escape, ArrowDown + Enter
    chose from the hidden list."""
    pg, problems = page
    pg.goto(site + "/lineage")
    pg.fill("#search", "prof:age")
    pg.wait_for_selector('#results li[data-id="feature:prof:age"]')
    pg.fill("#search", "txn:amount")
    pg.press("#search", "Enter")
    status_of(pg, "feature:txn:amount")
    assert pg.evaluate("() => window.lineage.state.root") == "feature:txn:amount"

    pg.fill("#search", "prof")
    pg.wait_for_selector('#results li[data-id="feature:prof:age"]')
    pg.press("#search", "Escape")
    pg.press("#search", "ArrowDown")
    pg.fill("#search", "txn")  # typed on: Enter before its list comes is the text typed
    pg.press("#search", "Enter")
    status_of(pg, "view:txn")  # the bare name "txn" resolves to the view
    # and the list, when it is the text's own and shown, is still what Enter picks
    pg.fill("#search", "prof:a")
    pg.wait_for_selector('#results li[data-id="feature:prof:age"]')
    pg.press("#search", "Enter")
    status_of(pg, "feature:prof:age")
    assert problems == []


@pytest.mark.parametrize(
    ("view", "why"),
    [("prof", "(a memory store loads its source itself)"), ("txn", "(no run recorded in the graph)")],
)
def test_a_view_without_a_data_version_is_explained_by_its_store(
    site: str, page: tuple[Page, list[str]], view: str, why: str
) -> None:
    """Review s58 #10: every view without a data version read "a memory store loads its
    source itself", a ClickHouse or Redis view too."""
    pg, problems = page
    pg.goto(site + f"/lineage?root=view:{view}")
    pg.wait_for_function("() => document.querySelectorAll('#panel h3').length === 1")
    assert pg.inner_text("#panel p.none") == f"none recorded {why}"
    feature = f"feature:{view}:{'age' if view == 'prof' else 'amount'}"
    pg.evaluate(f"() => window.lineage.select('{feature}')")
    pg.wait_for_function(
        f"() => document.getElementById('panel').dataset.node === '{feature}'"
        " && document.getElementById('panel').innerText.includes('none recorded (')"
    )
    assert f"none recorded {why}" in pg.inner_text("#panel")
    assert problems == []
