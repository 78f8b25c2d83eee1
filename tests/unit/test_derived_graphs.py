"""Walks over the derived-feature graph: deep chains (deeper than Python's recursion
limit) and views where many paths meet parse, generate and plan; each feature is
visited a bounded number of times; a cycle is still named with its path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from featurestore.dag import find_cycle, post_order
from featurestore.definitions.diff import diff
from featurestore.definitions.parser import parse_definitions
from featurestore.definitions.snapshot import new_snapshot
from featurestore.derived import compiler
from featurestore.derived.codegen import KernelSpec, generate
from featurestore.derived.resolve import plan_derived
from featurestore.errors import DefinitionError
from featurestore.model import Definitions, DerivedView, FeatureRef

DEEP = 1500  # Python's recursion limit is 1,000 frames


def chain(n: int, *, fibonacci: bool = False, reverse: bool = False) -> dict[str, Any]:
    """One derived view of ``n`` features: f_i = f_{i-1} + 1 (or + f_{i-2}); reversed,
    f_i = f_{i+1} + 1, so the walks start from the deep end."""
    features = []
    for i in range(n):
        if reverse:
            expression = f"f{i + 1} + 1" if i < n - 1 else "x + 1"
        elif i == 0:
            expression = "x + 1"
        else:
            expression = f"f{i - 1} + f{i - 2}" if fibonacci and i > 1 else f"f{i - 1} + 1"
        features.append({"name": f"f{i}", "dtype": "float64", "expression": expression})
    return {
        "project": "p",
        "entities": [{"name": "id", "dtype": "int64"}],
        "feature_views": [{"name": "t", "entities": ["id"], "features": [{"name": "x", "dtype": "float64"}]}],
        "derived_views": [{"name": "d", "inputs": ["t:x"], "features": features}],
    }


def plan(defs: Definitions, refs: list[FeatureRef]) -> Any:
    """The plan of ``refs`` over kernels generated but not compiled (compiling a
    1,500-statement kernel took numba about 70 s before the one-row entry, which made a
    300-feature chain's build 6.8 -> 9.0 s: benchmarks/RESULTS.md; test_derived_kernels
    compiles)."""
    kernels = {
        name: compiler.Kernel(
            generate(view, defs),
            run=lambda inp: inp,
            from_cache=False,
            into=lambda inp, out: 0,
            row=lambda *a: a,
        )
        for name, view in defs.derived_views.items()
    }
    return plan_derived(defs, kernels, refs, lambda ref: (0, 0))


def test_a_fibonacci_shaped_view_plans_visiting_each_feature_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """f_i = f_{i-1} + f_{i-2}: 30 features, 1.3 million paths from f29 to x; the walks
    used to follow every path (4.9 s on the event loop at the first join)."""
    defs = parse_definitions(chain(30, fibonacci=True), source="c.yaml")
    lookups = 0
    feature_index = DerivedView.feature_index

    def counted(view: DerivedView, name: str) -> int | None:
        nonlocal lookups
        lookups += 1
        return feature_index(view, name)

    monkeypatch.setattr(DerivedView, "feature_index", counted)
    refs = [FeatureRef("d", f"f{i}") for i in (29, 28, 0)]
    derived = plan(defs, refs)
    assert len(derived.outputs) == 3 and [s.view for s in derived.steps] == ["d"]
    assert defs.stored_inputs(FeatureRef("d", "f29")) == {FeatureRef("t", "x")}
    assert lookups < 20 * 30, f"{lookups} feature lookups for 30 features"


@pytest.mark.parametrize("reverse", [False, True], ids=["chain", "reversed_chain"])
def test_a_chain_deeper_than_the_recursion_limit_validates_generates_and_plans(reverse: bool) -> None:
    defs = parse_definitions(chain(DEEP, reverse=reverse), source="c.yaml")
    deep_end = FeatureRef("d", "f0" if reverse else f"f{DEEP - 1}")
    assert defs.stored_inputs(deep_end) == {FeatureRef("t", "x")}
    derived = plan(defs, [deep_end])
    assert [s.view for s in derived.steps] == ["d"]
    source = derived.steps[0].kernel.spec.source
    # every feature is computed after the one it reads, the deep end last, once: in the
    # one-row entry, which the loop over rows calls
    view = defs.derived_views["d"]
    assigned = re.findall(r"^ +(f\d+) = ", source, flags=re.MULTILINE)
    order = [view.features[int(var[1:])].name for var in assigned]
    assert order == [f"f{i}" for i in (range(DEEP - 1, -1, -1) if reverse else range(DEEP))]
    assert "r = kernel_row(inp[0, i])" in source.split("def kernel_into(")[1]


@pytest.mark.parametrize("reverse", [False, True], ids=["chain", "reversed_chain"])
def test_feature_versions_of_a_chain_deeper_than_the_recursion_limit_follow_a_change_at_its_root(
    reverse: bool,
) -> None:
    """Publishing such a view used to raise RecursionError (in new_snapshot, under the
    registry's lock)."""
    defs = parse_definitions(chain(DEEP, reverse=reverse), source="c.yaml")
    s1 = new_snapshot(defs, 1)
    s2 = new_snapshot(parse_definitions(chain(DEEP, reverse=reverse), source="c.yaml"), 2, previous=s1)
    assert set(s2.feature_versions.values()) == {1}
    doc = chain(DEEP, reverse=reverse)
    root = doc["derived_views"][0]["features"][-1 if reverse else 0]
    root["expression"] = "x + 2"
    s3 = new_snapshot(parse_definitions(doc, source="c.yaml"), 3, previous=s2)
    assert s3.feature_versions == {"t:x": 1, **{f"d:f{i}": 3 for i in range(DEEP)}}


def test_feature_versions_of_a_fibonacci_shaped_view_decide_each_feature_once() -> None:
    """f_i = f_{i-1} + f_{i-2}: 200 features, ~10^41 paths. Signatures nested per path
    made publishing 36 such features take 4.9 s, x1.6 per feature more."""
    n = 200
    s1 = new_snapshot(parse_definitions(chain(n, fibonacci=True), source="c.yaml"), 1)
    doc = chain(n, fibonacci=True)
    doc["derived_views"][0]["features"][100]["expression"] = "f99 - f98"
    s2 = new_snapshot(parse_definitions(doc, source="c.yaml"), 2, previous=s1)
    assert s2.feature_versions == {"t:x": 1, **{f"d:f{i}": 1 if i < 100 else 2 for i in range(n)}}


def test_diff_of_a_reversed_chain_deeper_than_the_recursion_limit_finds_a_new_request_need() -> None:
    """Each feature's request fields are collected after those of what it reads; the
    reversed chain starts the walk at the deep end (it raised RecursionError)."""
    doc = chain(DEEP, reverse=True)
    doc["derived_views"][0]["request_schema"] = [{"name": "price", "dtype": "float64"}]
    old = parse_definitions(doc, source="c.yaml")
    doc["derived_views"][0]["features"][-1]["expression"] = "x + price"
    (change,) = diff(old, parse_definitions(doc, source="c.yaml"))
    why = "now needs request_data.price (callers that do not send it get 400s)"
    assert change.incompatible == tuple(f"feature f{i} {why}" for i in range(DEEP))


def test_validate_of_a_reversed_chain_prints_a_clean_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``featurestore validate`` used to print a RecursionError traceback here. The
    kernel is generated but its numba build is left out (about 70 s for 1,500
    statements before the one-row entry, more since); validate's build is tested in
    test_derived_kernels."""
    from featurestore.cli import main

    built: list[KernelSpec] = []
    monkeypatch.setattr(compiler, "build_sync", lambda specs, directory: built.extend(specs))
    path = tmp_path / "rev.yaml"
    path.write_text(yaml.safe_dump(chain(DEEP, reverse=True)))
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert (
        f"rev.yaml: OK - project p: 1 entities, 1 feature views (1 features), 1 derived views ({DEEP} features)"
        in out
    )
    assert err == "" and [s.view for s in built] == ["d"]


def test_a_cycle_longer_than_the_recursion_limit_is_named_with_its_path() -> None:
    doc = chain(DEEP, reverse=True)
    doc["derived_views"][0]["features"][-1]["expression"] = "f0 + x"  # f1499 reads f0: a loop
    with pytest.raises(DefinitionError) as e:
        parse_definitions(doc, source="c.yaml")
    path = " -> ".join(f"d:f{i}" for i in [*range(DEEP), 0])
    assert str(e.value) == f"c.yaml: derived_views[d]: cycle: {path}"


def test_find_cycle_names_the_cycle_from_where_the_walk_met_it() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["b"], "d": []}
    assert find_cycle(graph) == ["b", "c", "b"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_post_order_puts_each_node_after_its_dependencies_once() -> None:
    deps = {"top": ["left", "right"], "left": ["base"], "right": ["base"], "base": []}
    assert post_order(["top"], deps.__getitem__) == ["base", "left", "right", "top"]
    deep = {i: [i + 1] if i < 5000 else [] for i in range(5001)}
    assert post_order([0], deep.__getitem__) == list(range(5000, -1, -1))


def test_request_fields_are_listed_in_the_order_a_depth_first_walk_meets_them() -> None:
    """The plan checks request fields (and names the first missing one) in the order of
    each feature's dependencies, derived ones entered where they appear."""
    doc = chain(1)
    doc["derived_views"][0]["request_schema"] = [{"name": n, "dtype": "float64"} for n in ("r", "q", "p")]
    doc["derived_views"][0]["features"] = [
        {"name": "uses_q", "dtype": "float64", "expression": "q * 2"},
        {"name": "top", "dtype": "float64", "expression": "p + uses_q + r + x"},
    ]
    defs = parse_definitions(doc, source="c.yaml")
    derived = plan(defs, [FeatureRef("d", "top")])
    assert [(r.field.name, r.needed_by) for r in derived.request] == [
        ("p", "d:top"),
        ("q", "d:uses_q"),
        ("r", "d:top"),
    ]
