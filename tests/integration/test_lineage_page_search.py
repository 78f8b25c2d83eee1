"""The lineage page's search box in a real browser (Debian's chromium, headless, Playwright)
over the in-process graph of test_lineage_page_wide.py (review s58 round 2c #8): a choice
(Enter), Escape or leaving the box cancels the search still waiting out its debounce and
the one on its way, so no list opens under the box afterwards.

No test waits for time to pass: the page's debounce timer and the search answers are held
by the script below and let go by the test, so "within 150 ms of typing" is exact."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.integration import test_lineage_page as pages
from tests.integration import test_lineage_page_wide as wide

page, site = pages.page, wide.site  # the fixtures: a browser page, the page's base url

# Timers set while the search box's input event is dispatched (its debounce) are held until
# window.fireHeld() runs them. While window.holdSearches() is in force, search requests wait
# for window.releaseSearches(). window.searches counts them: sent, settled (a macrotask after
# the answer's body was read or the request failed, so the page's handlers have run), and
# aborted (their signal aborted when they settled).
HOLD = """
  const realSetTimeout = window.setTimeout, realClearTimeout = window.clearTimeout;
  let inInput = false, nextId = 1e9, gate = null;
  window.held = new Map();
  window.addEventListener("input", e => { inInput = e.target.id === "search"; }, true);
  window.addEventListener("input", () => { inInput = false; });
  window.setTimeout = function (fn, ms, ...args) {
    if (!inInput) { return realSetTimeout(fn, ms, ...args); }
    const id = nextId++;
    window.held.set(id, () => fn(...args));
    return id;
  };
  window.clearTimeout = function (id) { if (!window.held.delete(id)) { realClearTimeout(id); } };
  window.fireHeld = function () {
    const fns = [...window.held.values()];
    window.held.clear();
    fns.forEach(fn => fn());
    return fns.length;
  };
  window.holdSearches = () => { gate = new Promise(r => { window.releaseSearches = r; }); };
  window.searches = { sent: 0, settled: 0, aborted: 0 };
  const realFetch = window.fetch;
  window.fetch = function (url, opts) {
    if (!((opts && opts.body) || "").includes("search(text")) { return realFetch(url, opts); }
    window.searches.sent++;
    const settle = () => realSetTimeout(() => {
      if (opts.signal && opts.signal.aborted) { window.searches.aborted++; }
      window.searches.settled++;
    }, 0);
    const failed = e => { settle(); throw e; };
    return Promise.resolve(gate).then(() => realFetch(url, opts)).then(res => {
      const json = res.json.bind(res);
      res.json = () => json().then(doc => { settle(); return doc; }, failed);
      return res;
    }, failed);
  };
"""

SETTLED = "() => window.searches.sent === window.searches.settled"


def leave(pg: Page, how: str) -> None:
    if how == "Enter":
        pg.press("#search", "Enter")
        wide.status_of(pg, "feature:txn:amount")
    elif how == "Escape":
        pg.press("#search", "Escape")
    else:
        pg.locator("#search").blur()


def shown(pg: Page) -> tuple[bool, list[str]]:
    hidden: bool = pg.evaluate("() => document.getElementById('results').hidden")
    items: list[str] = pg.eval_on_selector_all("#results li", "els => els.map(e => e.dataset.id)")
    return not hidden, items


@pytest.mark.parametrize("how", ["Enter", "Escape", "blur"])
@pytest.mark.parametrize("stage", ["debouncing", "on its way"])
def test_no_search_typed_before_a_choice_escape_or_blur_opens_the_list_after_it(
    site: str, page: tuple[Page, list[str]], how: str, stage: str
) -> None:
    """Before the fix, Enter (or a click elsewhere) within the 150 ms debounce left the
    timer set: it fired after the choice and its list opened over the page; a search on its
    way was only ignored, not aborted. Chromium clears a type=search box on Escape, and that
    input event replaced the pending timer, so [debouncing-Escape] passed before too: it
    stands for browsers that keep the text."""
    pg, problems = page
    pg.add_init_script(HOLD)
    pg.goto(site + "/lineage")
    if stage == "on its way":
        pg.evaluate("() => window.holdSearches()")
    pg.fill("#search", "txn:amount")
    assert pg.evaluate("() => window.held.size") == 1  # the debounce has not run out
    if stage == "on its way":
        assert pg.evaluate("() => window.fireHeld()") == 1
        assert pg.evaluate("() => window.searches.sent") == 1
    leave(pg, how)
    pg.evaluate("() => window.fireHeld()")  # what the page left to run after the debounce
    if stage == "on its way":
        pg.evaluate("() => window.releaseSearches()")
    pg.wait_for_function(SETTLED)
    assert shown(pg) == (False, [])
    # the request on its way was cancelled, not just its answer dropped
    assert pg.evaluate("() => window.searches.aborted") == (1 if stage == "on its way" else 0)
    if how == "Enter":
        assert pg.evaluate("() => window.lineage.state.root") == "feature:txn:amount"

    # and the box searches as before when typed in again
    pg.evaluate("() => window.releaseSearches && window.releaseSearches()")
    pg.fill("#search", "prof:age")
    assert pg.evaluate("() => window.fireHeld()") == 1
    pg.wait_for_function(SETTLED)
    assert shown(pg) == (True, ["feature:prof:age"])
    assert problems == []
