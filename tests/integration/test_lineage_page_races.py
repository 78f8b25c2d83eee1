"""The lineage page in a real browser (Debian's chromium, headless, Playwright) when its
answers come late or a bare name is two nodes (review s56 #4, #7): the side panel of a
node never shows another node's sections, and the root marked is the one the server drew
around. Fixtures are test_lineage_page.py's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Page
from starlette.applications import Starlette
from starlette.routing import Mount

from lineage.graph.base import DefinitionFacts, FeatureInfo
from lineage.graph.memory import InMemoryGraph
from lineage.graphql import LineageGraphQL
from lineage.page import LineagePage
from tests.integration import test_lineage_page as pages
from tests.support import ServerProcess, wait_until

demo, page = pages.demo, pages.page  # the fixtures: a demo server, a browser page

# The feature panel's first query (servedBy) for user_profile:age answers 1.5 s late, as
# from a slow graph; window.slowAnswered tells when it has.
SLOW_PANEL = """
  const f = window.fetch;
  window.fetch = function (url, opts) {
    const body = (opts && opts.body) || "";
    if (!(body.includes("servedBy") && body.includes("user_profile:age"))) { return f(url, opts); }
    return new Promise(r => setTimeout(r, 1500)).then(() => f(url, opts))
      .then(res => { setTimeout(() => { window.slowAnswered = true; }, 0); return res; });
  };
"""


def sections(pg: Page) -> list[str]:
    titles: list[str] = pg.eval_on_selector_all("#panel h3", "els => els.map(e => e.textContent)")
    return titles


def test_a_late_panel_answer_for_the_node_selected_before_is_dropped(
    demo: ServerProcess, page: tuple[Page, list[str]]
) -> None:
    """A's panel requests answered after B was selected and appended A's Served, Latest
    data version, Changes upstream and Drift sections under B's name."""
    pg, problems = page
    for _ in range(3):
        assert demo.join({"entities": {"user_id": [17]}, "features": ["user_profile:age"]})[0] == 200
    wait_until(
        lambda: pages.gql(demo, '{ feature(id: "user_profile:age") { servedBy { count } } }')["data"][
            "feature"
        ]["servedBy"],
        15,
        "the joins' lineage in the graph",
        interval=0.2,
    )
    pg.add_init_script(SLOW_PANEL)
    pg.goto(demo.url + "/lineage")
    pg.evaluate("() => window.lineage.select('feature:user_profile:age')")
    pg.wait_for_function("() => document.getElementById('panel').dataset.node === 'feature:user_profile:age'")
    pg.evaluate("() => window.lineage.select('service:ranker_v1')")  # before A's panel answered
    pg.wait_for_function("() => document.getElementById('panel').dataset.node === 'service:ranker_v1'")
    pg.wait_for_function("() => window.slowAnswered === true", timeout=10_000)
    pg.wait_for_timeout(1000)  # what A's answer would have asked next has answered too
    assert sections(pg) == []  # a service's panel has its facts only
    assert "ranker_v1" in pg.inner_text("#panel h2")
    # and the feature's own panel, asked again, is whole (its answer late, but its own)
    pg.evaluate("() => window.lineage.select('feature:user_profile:age')")
    pg.wait_for_function("() => document.querySelectorAll('#panel h3').length === 4", timeout=10_000)
    assert sections(pg) == ["Served", "Latest data version", "Changes upstream", "Drift"]
    assert problems == []


@contextlib.contextmanager
def page_site(graph: InMemoryGraph) -> Iterator[str]:
    """The lineage page and GraphQL over ``graph``, served by uvicorn in a thread: its
    base url."""
    page_app: Any = LineagePage()  # an ASGI callable of its own signature
    app = Starlette(routes=[Mount("/graphql", LineageGraphQL(graph)), Mount("/lineage", page_app)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def view_and_service_of_one_name() -> Iterator[str]:
    """A page and GraphQL over an in-process graph with a view `ranker` (feature
    `ranker:score`) and a service `ranker`, served by uvicorn: its base url."""
    graph = InMemoryGraph()
    f = FeatureInfo("ranker:score", "ranker", "float64", 1, (1,))
    asyncio.run(
        graph.apply_definitions(
            DefinitionFacts(
                project="p", valid_from_ms=0, registry_version=1, views=("ranker",), services=("ranker",),
                features=(f,), contains=(("ranker", f.id),), uses=(("ranker", f.id),), derived_from=(),
                produced_by=((f.id, "warehouse.r", "batch"),),
                described=(("view", "ranker", "view-owner@x", "THE VIEW"),
                           ("service", "ranker", "svc-owner@x", "THE SERVICE")),
            )
        )
    )  # fmt: skip
    with page_site(graph) as url:
        yield url


def test_the_page_marks_the_root_the_server_drew_around_for_a_bare_name(
    view_and_service_of_one_name: str, page: tuple[Page, list[str]]
) -> None:
    """The server resolves a bare name as a feature, view, table, then service; the page
    took the first node of that label, the service (`service:` sorts first)."""
    pg, problems = page
    url = view_and_service_of_one_name
    answer = pg.request.post(url + "/graphql", data={"query": '{ graph(root: "ranker") { root } }'}).json()
    assert answer == {"data": {"graph": {"root": "view:ranker"}}}
    pg.goto(url + "/lineage?root=ranker")
    pg.wait_for_function("() => document.getElementById('panel').dataset.node")
    assert pg.evaluate("() => window.lineage.cy.$('node.root').id()") == "view:ranker"
    assert pg.evaluate("() => document.getElementById('panel').dataset.node") == "view:ranker"
    assert "around view:ranker" in pg.inner_text("#status")
    assert "THE VIEW" in pg.inner_text("#panel")
    assert pg.evaluate("() => window.lineage.state.root") == "view:ranker"
    assert problems == []


# The request whose body matches LATE_WHEN answers 1.5 s late; with LATE_FAILS, as a GraphQL
# error (a Bolt read past its deadline). window.lateDone tells when it has.
LATE = """
  const f = window.fetch;
  window.fetch = function (url, opts) {
    const body = (opts && opts.body) || "";
    if (!(LATE_WHEN)) { return f(url, opts); }
    return new Promise(r => setTimeout(r, 1500)).then(() => {
      setTimeout(() => { window.lateDone = true; }, 0);
      if (!LATE_FAILS) { return f(url, opts); }
      return new Response(JSON.stringify({data: null, errors: [{message: "graph read took longer than 5 s"}]}),
                          {status: 200, headers: {"content-type": "application/json"}});
    });
  };
"""


def late(when: str, fails: bool) -> str:
    return LATE.replace("LATE_WHEN", when).replace("LATE_FAILS", "true" if fails else "false")


@pytest.mark.parametrize(
    "request_of_a",
    ['body.includes("servedBy") && body.includes("ranker:score")', 'body.includes("feature:ranker:score")'],
    ids=["panel", "graph"],
)
def test_a_late_failure_for_the_node_selected_before_leaves_the_status_line_alone(
    view_and_service_of_one_name: str, page: tuple[Page, list[str]], request_of_a: str
) -> None:
    """Review s56 r2 #3: feature A's panel (or graph) request failed after service B was
    selected, and its error replaced B's status line, in red, over B's graph and panel."""
    pg, problems = page
    pg.add_init_script(late(request_of_a, fails=True))
    pg.goto(view_and_service_of_one_name + "/lineage")
    pg.evaluate("() => window.lineage.select('feature:ranker:score')")
    pg.wait_for_timeout(300)
    pg.evaluate("() => window.lineage.select('service:ranker')")
    pg.wait_for_function("() => document.getElementById('panel').dataset.node === 'service:ranker'")
    pg.wait_for_function("() => window.lateDone === true", timeout=10_000)
    pg.wait_for_timeout(500)
    assert "around service:ranker" in pg.inner_text("#status")
    assert pg.evaluate("() => document.getElementById('status').className") == ""
    assert problems == []


def test_a_search_answer_for_an_older_text_does_not_replace_the_newer_list(
    view_and_service_of_one_name: str, page: tuple[Page, list[str]]
) -> None:
    """Review s56 r2 #3: the answer for "ra" came after the one for "ranker:s" and replaced
    its list, so ArrowDown + Enter chose among results for text no longer in the box."""
    pg, problems = page
    pg.add_init_script(late('body.includes("search(text") && body.includes(\'"t":"ra"\')', fails=False))
    pg.goto(view_and_service_of_one_name + "/lineage")
    box = pg.locator("#search")
    box.click()
    box.fill("ra")
    pg.wait_for_timeout(400)
    box.fill("ranker:s")
    pg.wait_for_function("() => document.querySelectorAll('#results li').length > 0")
    newer = pg.eval_on_selector_all("#results li", "els => els.map(e => e.dataset.id)")
    assert newer == ["feature:ranker:score"]
    pg.wait_for_function("() => window.lateDone === true", timeout=10_000)
    pg.wait_for_timeout(500)
    assert pg.eval_on_selector_all("#results li", "els => els.map(e => e.dataset.id)") == newer
    assert problems == []
