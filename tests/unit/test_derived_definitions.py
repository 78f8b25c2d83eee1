"""Derived views in definitions: the expression language's grammar and types, the YAML
format, errors with their paths, cycles, snapshots, fingerprints and diffs."""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from featurestore.definitions.diff import diff, render
from featurestore.definitions.parser import load_definitions, parse_definitions
from featurestore.definitions.snapshot import (
    definitions_to_dict,
    fingerprint,
    new_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from featurestore.derived.language import (
    Binary,
    Bucket,
    Call,
    Compare,
    Const,
    ExpressionError,
    Logic,
    Name,
    StrCompare,
    Type,
    Unary,
    names_used,
    parse_expression,
)
from featurestore.errors import DefinitionError
from featurestore.model import Definitions, DType, FeatureRef

DEMO = Path(__file__).resolve().parents[2] / "featurestore" / "demo" / "features.yaml"
NAMES = {"x": Type.NUM, "y": Type.NUM, "flag": Type.BOOL, "country": Type.STR}


def base() -> dict[str, Any]:
    return {
        "project": "p",
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "feature_views": [
            {
                "name": "uv",
                "entities": ["user_id"],
                "features": [
                    {"name": "a", "dtype": "float64"},
                    {"name": "n", "dtype": "int64"},
                    {"name": "c", "dtype": "string"},
                    {"name": "vec", "dtype": "float32_vector"},
                ],
            }
        ],
        "derived_views": [
            {
                "name": "dv",
                "inputs": {"a": "uv:a", "n": "uv:n"},
                "request_schema": [{"name": "price", "dtype": "float64"}],
                "features": [
                    {"name": "p", "dtype": "float64", "expression": "a * bucket(price, [0, 10])"},
                    {"name": "q", "dtype": "float64", "expression": "p + n"},
                ],
            }
        ],
        "feature_services": [{"name": "svc", "features": ["uv:a", "dv"]}],
    }


def with_derived(**changes: Any) -> dict[str, Any]:
    doc = base()
    doc["derived_views"][0].update(changes)
    return doc


def fails(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_definitions(doc, source="f.yaml")
    assert message in str(e.value), str(e.value)


# -- the language ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("x + y", "Binary(op='+'"),
        ("x - y", "Binary(op='-'"),
        ("x * y", "Binary(op='*'"),
        ("x / y", "Binary(op='/'"),
        ("x ** 2", "Binary(op='**'"),
        ("-x", "Unary(op='neg'"),
        ("+x", "Name(name='x'"),
        ("x == y", "Compare(op='=='"),
        ("x != y", "Compare(op='!='"),
        ("x < y", "Compare(op='<'"),
        ("x <= y", "Compare(op='<='"),
        ("x > y", "Compare(op='>'"),
        ("x >= y", "Compare(op='>='"),
        ("flag and x > 1", "Logic(op='and'"),
        ("flag or not flag", "Logic(op='or'"),
        ("not flag", "Unary(op='not'"),
        ("where(flag, x, y)", "Call(fn='where'"),
        ("log(x)", "Call(fn='log'"),
        ("log1p(x)", "Call(fn='log1p'"),
        ("exp(x)", "Call(fn='exp'"),
        ("sqrt(x)", "Call(fn='sqrt'"),
        ("abs(x)", "Call(fn='abs'"),
        ("min(x, y, 3)", "Call(fn='min'"),
        ("max(x, y)", "Call(fn='max'"),
        ("clip(x, 0, 1)", "Call(fn='clip'"),
        ("coalesce(x, y, 0)", "Call(fn='coalesce'"),
        ("bucket(x, [0, 10, 50, 100])", "Bucket("),
        ("country == 'DE'", "StrCompare(op='=='"),
        ("country != 'DE'", "StrCompare(op='!='"),
        ("true", "Const(value=1.0"),
        ("False", "Const(value=0.0"),
    ],
)
def test_every_operator_and_function_parses_to_its_node(text: str, node: str) -> None:
    assert repr(parse_expression(text, NAMES)).startswith(node)


def test_types_flow_through_the_tree() -> None:
    assert parse_expression("x * 2", NAMES).type is Type.NUM
    assert parse_expression("x > 2 and flag", NAMES).type is Type.BOOL
    assert parse_expression("where(flag, true, false)", NAMES).type is Type.BOOL
    assert parse_expression("coalesce(flag, false)", NAMES).type is Type.BOOL


def test_comparison_chains_become_a_conjunction() -> None:
    node = parse_expression("0 < x <= 10", NAMES)
    assert isinstance(node, Logic) and node.op == "and"
    assert [type(a) for a in node.args] == [Compare, Compare]


def test_negative_constants_fold_so_bucket_edges_may_be_negative() -> None:
    node = parse_expression("bucket(x, [-10, 0, 2.5])", NAMES)
    assert isinstance(node, Bucket) and node.edges == (-10.0, 0.0, 2.5)
    assert parse_expression("-3", NAMES) == Const(-3.0, Type.NUM)


def test_names_used_lists_each_name_once_in_order() -> None:
    assert names_used(parse_expression("y * x + coalesce(x, y) + where(country == 'DE', 1, 0)", NAMES)) == [
        "y",
        "x",
        "country",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x + country", "arithmetic needs a number, got a string ('country') (at column 5)"),
        ("flag + 1", "arithmetic needs a number, got a bool"),
        ("not x", "'not' needs a bool, got a number"),
        ("x and flag", "'and' needs a bool"),
        ("country < 'x'", "strings compare only with == and !="),
        ("'a' == 'b'", "a string constant compares only with a string input or request field"),
        ("country == 'a' != 'b'", "a string constant compares only with a string input or request field"),
        ("flag < true", "bools compare only with == and !="),
        ("x == flag", "cannot compare a number with a bool"),
        ("x == 'a'", "cannot compare a number with a string"),
        ("where(x, 1, 2)", "where()'s condition needs a bool"),
        ("where(flag, 1, flag)", "where() mixes a number and a bool"),
        ("coalesce(country, 'x')", "coalesce() of strings is not supported"),
        ("bucket(x, [10, 0])", "edges must be strictly ascending"),
        ("bucket(x, [])", "non-empty list of numbers"),
        ("bucket(x, y)", "non-empty list of numbers"),
        ("bucket(x, [y])", "edges must be number constants"),
        ("min(x)", "min() takes 2 to 64 arguments, got 1"),
        (f"min({', '.join(['x'] * 65)})", "min() takes 2 to 64 arguments, got 65"),
        (
            " + ".join(["x"] * 202),
            "nested too deeply (at most 200 levels of arithmetic operators, 150 of comparisons",
        ),
        ("not " * 201 + "flag", "nested too deeply"),
        ("abs(" * 76 + "x" + ")" * 76, "nested too deeply"),
        ("bucket(" * 76 + "x" + ", [0, 1])" * 76, "nested too deeply"),
        ("log(x, 2)", "log() takes 1 argument, got 2"),
        ("clip(x, 1)", "clip() takes 3 arguments, got 2"),
        ("unknown_thing + 1", "unknown name 'unknown_thing'"),
        ("price * 2", "declare it in request_schema"),
        ("eval('1')", "unknown function 'eval'"),
        ("__import__('os').system('true')", "only the built-in functions can be called"),
        ("x.real", "'x.real' is not part of the expression language"),
        ("x[0]", "is not part of the expression language"),
        ("[x, y]", "is not part of the expression language"),
        ("lambda: 1", "is not part of the expression language"),
        ("x if flag else y", "is not part of the expression language"),
        ("x // y", "is not part of the expression language"),
        ("x % y", "is not part of the expression language"),
        ("x in [1, 2]", "is not a comparison of the language"),
        ("log(x=1)", "only the built-in functions can be called"),
        ("1e999", "the constant 1e999 is not a finite number"),  # as written, not as read (inf)
        ("x * -1_0E+999", "the constant 1_0E+999 is not a finite number (at column 6)"),
        (
            "x + 1" + "0" * 400,
            "the constant 1000000000000000000000... (401 characters) is not a finite number",
        ),
        ("bucket(x, [0, 1" + "0" * 400 + "])", "(401 characters) is not a finite number (at column 15)"),
        ("None", "not a number, bool or string"),
        ("x +", "syntax error at column 4: invalid syntax"),  # at the end: Python gives no column
        ("  (x +\n y +", "syntax error at line 1, column 3: '(' was never closed"),
        ("x ++ \n", "syntax error at column 5"),
        ("'\u00e9\u00e9\u00e9' + 09", "syntax error at column 9: leading zeros"),  # Python: a byte offset
        ("x + 1\x00", "syntax error at column 6: source code string cannot contain null bytes"),
        ("(x +\n  y\x00)", "syntax error at line 2, column 4"),
        # columns count characters, not UTF-8 bytes (ast's offsets are bytes)
        ("where(country == '\u00e9', x, 1) + country", "got a string ('country') (at column 31)"),
        ("   x + country", "got a string ('country') (at column 8)"),  # columns of the text as written
        ("  x + )", "syntax error at column 7"),
        # several lines: the line, and the column in it (the first line's stripped blanks
        # are not in the others)
        ("  (x +\n y + country)", "got a string ('country') (at line 2, column 6)"),
        ("  (x +\n y +)", "syntax error at line 2, column 5"),
        ("\n  (x + country\n)", "got a string ('country') (at line 2, column 8)"),
        ("\n  x + country", "got a string ('country') (at line 2, column 7)"),
        ("x + country\n", "got a string ('country') (at column 5)"),
        ("  (x +\r y + country)", "got a string ('country') (at line 2, column 6)"),  # a lone CR breaks too
        ("  (x +\r\n y + country)", "got a string ('country') (at line 2, column 6)"),
        ("x +\n  y", "syntax error"),  # a line break outside brackets (inside them: Python's)
        ("", "an expression is required"),
        ("x" * 2001, "longer than 2000 characters"),
    ],
)
def test_expressions_outside_the_language_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as e:
        parse_expression(text, NAMES)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "text",
    [
        "'\u00e9' == country and x + country",  # a 2-byte character before it
        "'\U0001f600\u00e9' == country and x + country",  # 4 and 2 bytes
        "  ('\u00e9' == country and\n '\u00fc\u00fc' == country and x + country)",  # on the second line
        "('\u00e9' == country and\n x + country)",  # non-ASCII on the first line only
    ],
)
def test_error_columns_count_characters_after_non_ascii_text(text: str) -> None:
    *_, line = text.split("\n")
    want = line.rindex("country") + 1  # the last 'country' is what arithmetic refuses
    with pytest.raises(ExpressionError) as e:
        parse_expression(text, NAMES)
    where = f"line 2, column {want}" if "\n" in text else f"column {want}"
    assert f"got a string ('country') (at {where})" in str(e.value)


def test_the_string_comparison_keeps_its_operands() -> None:
    node = parse_expression("'DE' == country", NAMES)
    assert isinstance(node, StrCompare)
    assert node.a.value == "DE" and isinstance(node.b, Name)  # type: ignore[union-attr]


def test_unary_of_a_call_stays_a_node() -> None:
    node = parse_expression("-log(x)", NAMES)
    assert isinstance(node, Unary) and isinstance(node.arg, Call)


# -- the YAML format --------------------------------------------------------------------------


def test_the_demo_derived_view_has_the_four_features_of_the_issue() -> None:
    d = load_definitions(DEMO)
    v = d.derived_views["user_derived"]
    assert [(f.name, f.expression) for f in v.features] == [
        ("engagement_score", "ctr_30d * log1p(sessions_30d)"),
        ("spend_per_session", "spend_30d / (sessions_30d + 1e-6)"),
        ("ctr_x_price_bucket", "ctr_30d * bucket(item_price, [0, 10, 50, 100])"),
        ("value_score", "engagement_score + ctr_x_price_bucket"),
    ]
    assert [(r.name, r.dtype) for r in v.request_schema] == [("item_price", DType.FLOAT64)]
    assert v.features[3].depends_on == ("user_derived:engagement_score", "user_derived:ctr_x_price_bucket")
    assert v.features[2].depends_on == ("user_activity:ctr_30d", "request:item_price")
    assert [str(r) for r in d.services["ranker_v2"].features][-4:] == [
        "user_derived:engagement_score",
        "user_derived:spend_per_session",
        "user_derived:ctr_x_price_bucket",
        "user_derived:value_score",
    ]
    assert len(d.services["ranker_v1"].features) == 16  # existing callers keep their columns


def test_inputs_may_be_a_list_of_refs_named_by_their_feature() -> None:
    d = parse_definitions(with_derived(inputs=["uv:a", "uv:n"]), source="f.yaml")
    assert d.derived_views["dv"].inputs == (("a", FeatureRef("uv", "a")), ("n", FeatureRef("uv", "n")))


def test_a_service_may_list_a_derived_view_or_one_of_its_features() -> None:
    d = parse_definitions(base(), source="f.yaml")
    assert [str(r) for r in d.services["svc"].features] == ["uv:a", "dv:p", "dv:q"]
    doc = base()
    doc["feature_services"][0]["features"] = ["dv:q"]
    assert [str(r) for r in parse_definitions(doc, source="f.yaml").services["svc"].features] == ["dv:q"]
    doc["feature_services"][0]["features"] = ["dv:nope"]
    fails(doc, "feature_services[svc].features: view 'dv' has no feature 'nope'")


def test_derived_views_may_read_other_derived_views() -> None:
    doc = base()
    doc["derived_views"].append(
        {
            "name": "dv2",
            "inputs": {"q": "dv:q"},
            "features": [{"name": "r", "dtype": "bool", "expression": "q > 1"}],
        }
    )
    d = parse_definitions(doc, source="f.yaml")
    assert d.derived_views["dv2"].features[0].depends_on == ("dv:q",)
    assert d.stored_inputs(FeatureRef("dv2", "r")) == {FeatureRef("uv", "a"), FeatureRef("uv", "n")}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"features": [{"name": "p", "dtype": "float64", "expression": "a + c"}]},
            "f.yaml: derived_views[dv].features[p].expression: unknown name 'c'",
        ),
        (
            {
                "inputs": {"a": "uv:a", "c": "uv:c"},
                "features": [{"name": "p", "dtype": "float64", "expression": "a + c"}],
            },
            "derived_views[dv].features[p].expression: arithmetic needs a number, got a string ('c')",
        ),
        ({"inputs": {"a": "uv:nope"}}, "derived_views[dv].inputs: view 'uv' has no feature 'nope'"),
        ({"inputs": {"a": "nope:a"}}, "derived_views[dv].inputs: unknown feature view 'nope'"),
        ({"inputs": {"a": "not a ref"}}, "derived_views[dv].inputs: 'not a ref' is not a feature reference"),
        (
            {"inputs": {"v": "uv:vec"}},
            "derived_views[dv].inputs: uv:vec is a float32_vector, which expressions cannot use",
        ),
        ({"inputs": {"a": "dv:p"}}, "dv:p is in the view itself"),
        ({"inputs": {"log": "uv:a"}}, "invalid name 'log'"),
        (
            {"inputs": {"in": "uv:a"}},
            "invalid name 'in': a Python keyword, which no expression can name",
        ),
        ({"inputs": {"None": "uv:a"}}, "Python keyword"),
        ({"request_schema": []}, "derived_views[dv].features[p].expression: unknown name 'price'"),
        (
            {"request_schema": [{"name": "price", "dtype": "timestamp"}]},
            "request_schema[price].dtype: request fields are",
        ),
        (
            {"request_schema": [{"name": "a", "dtype": "float64"}]},
            "'a' is both an input and a request field of the view",
        ),
        (
            {"features": [{"name": "a", "dtype": "float64", "expression": "1"}]},
            "'a' is both an input and a feature of the view",
        ),
        (
            {"features": [{"name": "p", "dtype": "string", "expression": "1"}]},
            "features[p].dtype: derived features are",
        ),
        (
            {"features": [{"name": "p", "dtype": "float64", "expression": "a > 1"}]},
            "features[p].dtype: the expression is a bool, the feature a float64; use where(cond, 1, 0)",
        ),
        (
            {"features": [{"name": "p", "dtype": "bool", "expression": "a"}]},
            "the expression is a number, the feature a bool",
        ),
        ({"features": [{"name": "p", "dtype": "float64"}]}, "give exactly one of 'expression' or 'function'"),
        (
            {"features": [{"name": "p", "dtype": "float64", "expression": "a", "function": "m:f"}]},
            "give exactly one of 'expression' or 'function'",
        ),
        (
            {"features": [{"name": "p", "dtype": "float64", "function": "nocolon"}]},
            "'nocolon' is not 'module:function'",
        ),
        (
            {
                "features": [
                    {"name": "p", "dtype": "float64", "function": "no_such_module_x:f", "args": ["a"]}
                ]
            },
            "features[p].function: cannot import 'no_such_module_x'",
        ),
        (
            {"features": [{"name": "p", "dtype": "float64", "function": "math:no_such", "args": ["a"]}]},
            "module 'math' has no 'no_such'",
        ),
        (
            {"features": [{"name": "p", "dtype": "float64", "function": "math:hypot", "args": ["a", "zzz"]}]},
            "features[p].function: unknown name 'zzz'",
        ),
        (
            {"features": [{"name": "p", "dtype": "float64", "expression": "a", "args": ["a"]}]},
            "'args' goes with 'function'",
        ),
        (
            {"features": [{"name": "p", "dtype": "float64", "expression": "a * 1" + "0" * 400}]},
            "derived_views[dv].features[p].expression: the constant 1000000000000000000000... (401 characters) "
            "is not a finite number (at column 5)",
        ),
        ({"features": []}, "derived_views[dv].features: expected a non-empty list"),
        ({"colour": "red"}, "derived_views[dv].colour: unknown field"),
        ({"name": "uv"}, "derived_views[uv]: a feature view has the same name"),
        ({"name": "request"}, "'request' names request fields"),
        (
            {"features": [{"name": "user_id", "dtype": "float64", "expression": "a * 2"}]},
            "derived_views[dv].features[user_id]: has the name of an entity key of a view it reads",
        ),
        (
            {"features": [{"name": "score\n", "dtype": "float64", "expression": "a"}]},
            "invalid name 'score\\n'",
        ),
        ({"inputs": {"a\n": "uv:a"}}, "invalid name 'a\\n'"),
        (
            {
                "features": [
                    {"name": "p", "dtype": "float64", "expression": "a"},
                    {"name": "p", "dtype": "float64", "expression": "a * 2"},
                ]
            },
            "derived_views[dv].features[p]: defined twice",
        ),
    ],
)
def test_derived_view_errors_name_the_file_object_and_field(changes: dict[str, Any], message: str) -> None:
    fails(with_derived(**changes), message)


def test_a_cycle_inside_a_view_is_refused_naming_the_cycle() -> None:
    fails(
        with_derived(
            features=[
                {"name": "p", "dtype": "float64", "expression": "q + 1"},
                {"name": "q", "dtype": "float64", "expression": "r * 2"},
                {"name": "r", "dtype": "float64", "expression": "p - a"},
            ]
        ),
        "f.yaml: derived_views[dv]: cycle: dv:p -> dv:q -> dv:r -> dv:p",
    )
    fails(
        with_derived(features=[{"name": "p", "dtype": "float64", "expression": "p + 1"}]),
        "cycle: dv:p -> dv:p",
    )


def test_two_derived_views_reading_each_other_are_refused() -> None:
    doc = base()
    doc["derived_views"][0]["inputs"]["z"] = "dv2:z"
    doc["derived_views"].append(
        {
            "name": "dv2",
            "inputs": {"p": "dv:p"},
            "features": [
                {"name": "y", "dtype": "float64", "expression": "p"},
                {"name": "z", "dtype": "float64", "expression": "1"},
            ],
        }
    )
    fails(doc, "derived_views[dv].inputs: derived views read each other: dv -> dv2 -> dv")
    doc["derived_views"][0]["features"][0]["expression"] = "z"
    doc["derived_views"][1]["features"][1]["expression"] = "p"
    fails(doc, "derived_views[dv]: cycle: dv:p -> dv2:z -> dv:p")


def test_a_request_field_means_one_dtype_in_every_view() -> None:
    doc = base()
    doc["derived_views"].append(
        {
            "name": "dv2",
            "request_schema": [{"name": "price", "dtype": "int64"}],
            "features": [{"name": "y", "dtype": "float64", "expression": "price"}],
        }
    )
    fails(doc, "derived_views[dv2].request_schema[price].dtype: int64 here, float64 in derived view 'dv'")


def test_a_trusted_function_is_imported_and_its_arity_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trusted_fns_a.py").write_text("def risk(a, n):\n    return a * n\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    feature = {"name": "p", "dtype": "float64", "function": "trusted_fns_a:risk", "args": ["a", "n"]}
    d = parse_definitions(with_derived(features=[feature]), source="f.yaml")
    assert d.derived_views["dv"].features[0].depends_on == ("uv:a", "uv:n")
    fails(
        with_derived(features=[{**feature, "args": ["a"]}]),
        "features[p].function: trusted_fns_a:risk does not take 1 positional arguments",
    )
    sys.modules.pop("trusted_fns_a", None)


# -- snapshots, fingerprints, diffs ----------------------------------------------------------


def test_snapshots_round_trip_derived_views() -> None:
    d = load_definitions(DEMO)
    snap = new_snapshot(d, 3)
    back = snapshot_from_json(snapshot_to_json(snap))
    assert back.definitions == d
    assert back.definitions.derived_views["user_derived"].features[2].depends_on == (
        "user_activity:ctr_30d",
        "request:item_price",
    )
    assert back.fingerprint == fingerprint(d)
    assert "user_derived:value_score" in snap.feature_versions


def test_files_without_derived_views_keep_their_fingerprint() -> None:
    doc = base()
    del doc["derived_views"]
    doc["feature_services"][0]["features"] = ["uv:a"]
    d = parse_definitions(doc, source="f.yaml")
    assert "derived_views" not in definitions_to_dict(d)
    # The canonical JSON of the format before derived views existed: same bytes, same hash.
    assert fingerprint(d) == fingerprint(parse_definitions(copy.deepcopy(doc), source="other.yaml"))


def test_a_new_expression_is_a_compatible_change_and_a_new_feature_version() -> None:
    old = parse_definitions(base(), source="f.yaml")
    doc = base()
    doc["derived_views"][0]["features"][1]["expression"] = "p * n"
    new = parse_definitions(doc, source="f.yaml")
    changes = diff(old, new)
    assert [(c.kind, c.name, c.incompatible) for c in changes] == [("derived_view", "dv", ())]
    assert "feature q: p + n -> p * n" in render(changes)
    s1 = new_snapshot(old, 1)
    s2 = new_snapshot(new, 2, previous=s1)
    assert s2.feature_versions["dv:q"] == 2
    assert s2.feature_versions["dv:p"] == 1
    assert s2.feature_versions["uv:a"] == 1


def test_inputs_written_out_of_order_are_no_change_against_their_stored_snapshot() -> None:
    """A snapshot keeps a view's inputs sorted by name; the file keeps them as written."""
    doc = base()
    doc["derived_views"][0]["inputs"] = {"n": "uv:n", "a": "uv:a"}
    stored = snapshot_from_json(snapshot_to_json(new_snapshot(parse_definitions(doc, source="f.yaml"), 1)))
    doc["feature_views"][0]["features"].append({"name": "z", "dtype": "int64"})  # an unrelated change
    (change,) = diff(stored.definitions, parse_definitions(doc, source="f.yaml"))
    assert change.kind == "feature_view" and "inputs" not in render([change])


def versions_after(old: Definitions, new: Definitions) -> Mapping[str, int]:
    return new_snapshot(new, 2, previous=new_snapshot(old, 1)).feature_versions


def test_a_changed_upstream_derived_feature_gives_its_downstream_features_new_versions() -> None:
    old = load_definitions(DEMO)
    doc = yaml.safe_load(DEMO.read_text())
    (view,) = doc["derived_views"]
    view["features"][0]["expression"] = "ctr_30d * log(sessions_30d + 2)"  # engagement_score
    versions = versions_after(old, parse_definitions(doc, source="features.yaml", base_dir=DEMO.parent))
    assert versions["user_derived:engagement_score"] == 2
    assert versions["user_derived:value_score"] == 2, "value_score = engagement_score + ..."
    assert versions["user_derived:ctr_x_price_bucket"] == versions["user_derived:spend_per_session"] == 1


def test_a_changed_input_or_request_field_reaches_every_feature_downstream() -> None:
    doc = base()
    doc["derived_views"].append(
        {
            "name": "dv2",
            "inputs": {"q": "dv:q"},
            "features": [{"name": "r", "dtype": "float64", "expression": "q"}],
        }
    )
    old = parse_definitions(doc, source="f.yaml")
    moved = copy.deepcopy(doc)
    moved["derived_views"][0]["inputs"]["a"] = "uv:n"  # p reads another stored feature
    assert versions_after(old, parse_definitions(moved, source="f.yaml")) == {
        "uv:a": 1, "uv:n": 1, "uv:c": 1, "uv:vec": 1, "dv:p": 2, "dv:q": 2, "dv2:r": 2
    }  # fmt: skip
    retyped = copy.deepcopy(doc)
    retyped["derived_views"][0]["request_schema"][0]["dtype"] = "int64"
    versions = versions_after(old, parse_definitions(retyped, source="f.yaml"))
    assert (versions["dv:p"], versions["dv:q"], versions["dv2:r"]) == (2, 2, 2)
    unchanged = versions_after(old, parse_definitions(copy.deepcopy(doc), source="f.yaml"))
    assert set(unchanged.values()) == {1}


def test_a_derived_dtype_change_is_incompatible_for_callers() -> None:
    old = parse_definitions(base(), source="f.yaml")
    doc = base()
    doc["derived_views"][0]["features"][1].update(dtype="int64")
    (change,) = diff(old, parse_definitions(doc, source="f.yaml"))
    assert change.incompatible == ("feature q dtype float64 -> int64",)


def test_a_feature_that_now_needs_another_request_field_is_an_incompatible_change() -> None:
    """Callers that do not send the new field would get 400s, also through a view
    that reads the changed feature."""
    doc = base()
    doc["derived_views"][0]["features"].append({"name": "s", "dtype": "float64", "expression": "a * 2"})
    doc["derived_views"].append(
        {
            "name": "dv2",
            "inputs": {"s": "dv:s"},
            "features": [{"name": "r", "dtype": "float64", "expression": "s"}],
        }
    )
    old = parse_definitions(doc, source="f.yaml")
    doc["derived_views"][0]["request_schema"].append({"name": "qty", "dtype": "int64"})
    doc["derived_views"][0]["features"][2]["expression"] = "a * qty"
    changes = {c.name: c for c in diff(old, parse_definitions(doc, source="f.yaml"))}
    why = "now needs request_data.qty (callers that do not send it get 400s)"
    assert changes["dv"].incompatible == (f"feature s {why}",)
    assert changes["dv2"].incompatible == (f"feature r {why}",)
    assert f"! derived_view dv2: feature r {why} (incompatible)" in render(list(changes.values()))


def test_a_service_that_now_needs_a_request_field_through_a_feature_it_gained_is_an_incompatible_change() -> (
    None
):
    """The service's callers do not send the field: a derived view the service lists
    whole gaining a feature that needs one, or the service gaining such a feature. A
    field the service needed already, and a new service, have no such callers."""
    doc = base()
    doc["feature_services"].append({"name": "plain", "features": ["uv:a"]})
    old = parse_definitions(doc, source="f.yaml")
    doc["derived_views"][0]["request_schema"].append({"name": "qty", "dtype": "int64"})
    doc["derived_views"][0]["features"].append({"name": "t", "dtype": "float64", "expression": "a * qty"})
    doc["feature_services"][1]["features"].append("dv:q")  # needs price, through p
    doc["feature_services"].append({"name": "fresh", "features": ["dv:t"]})
    changes = {c.name: c for c in diff(old, parse_definitions(doc, source="f.yaml"))}
    assert changes["svc"].incompatible == (
        "now needs request_data.qty (through dv:t; callers that do not send it get 400s)",
    )
    assert changes["plain"].incompatible == (
        "now needs request_data.price (through dv:q; callers that do not send it get 400s)",
    )
    assert changes["dv"].incompatible == () and changes["fresh"].incompatible == ()
    assert not any(c.incompatible for c in diff(parse_definitions(doc, source="f.yaml"), old)), "needing less"


def test_a_request_field_that_accepts_less_is_incompatible_and_one_that_accepts_more_is_not() -> None:
    old = parse_definitions(base(), source="f.yaml")
    doc = base()
    doc["derived_views"][0]["request_schema"][0]["dtype"] = "int64"
    narrower = parse_definitions(doc, source="f.yaml")
    (change,) = diff(old, narrower)
    assert change.incompatible == (
        "request field price dtype float64 -> int64 (callers sending float64 get 400s)",
    )
    (change,) = diff(narrower, old)
    assert change.incompatible == () and "request_schema" in change.details


def test_adding_a_derived_view_shows_in_the_diff() -> None:
    doc = base()
    del doc["derived_views"]
    doc["feature_services"][0]["features"] = ["uv:a"]
    changes = diff(parse_definitions(doc, source="f.yaml"), parse_definitions(base(), source="f.yaml"))
    assert "+ derived_view dv: 2 features computed at request time" in render(changes)


@pytest.mark.parametrize(
    "text",
    [
        " + ".join(["x"] * 201),  # 200 levels of operators
        "abs(" * 75 + "x" + ")" * 75,  # 75 of calls
        "bucket(" * 75 + "x" + ", [0, 1])" * 75,  # the call taking the most frames
        "where(flag, 1, " * 75 + "x" + ")" * 75,
        "(flag and " * 120 + "flag" + ")" * 120,
    ],
    ids=["operators", "abs", "bucket", "where", "and"],
)
def test_an_expression_at_the_nesting_limit_parses_however_deep_the_caller_is(text: str) -> None:
    """The limit once was what the recursion limit left: lower the deeper the caller (an
    expression could pass `validate` and fail a server's swap)."""

    def down(frames: int) -> object:
        return parse_expression(text, NAMES) if frames == 0 else down(frames - 1)

    assert down(0) == down(250)


def test_an_expression_may_break_lines_inside_brackets_as_in_python() -> None:
    node = parse_expression("(x +\n   y)", {"x": Type.NUM, "y": Type.NUM})
    assert isinstance(node, Binary) and node.op == "+"


def test_a_derived_feature_may_be_called_yield_and_a_snapshot_loads_what_older_versions_took() -> None:
    named = with_derived(features=[{"name": "yield", "dtype": "float64", "expression": "a * 2"}])
    assert [f.name for f in parse_definitions(named, source="f.yaml").derived_views["dv"].features] == [
        "yield"
    ]
    # An unused input called `class` was accepted before inputs refused keywords: a stored
    # snapshot holding one must still load (the server starts on what the registry holds).
    stored = with_derived(inputs={"a": "uv:a", "n": "uv:n", "class": "uv:a"})
    fails(stored, "invalid name 'class': a Python keyword")  # in a definitions file: refused
    defs = parse_definitions(stored, source="stored snapshot", check_functions=False)
    assert [name for name, _ in defs.derived_views["dv"].inputs] == ["a", "class", "n"]  # (by name)


def test_a_feature_view_may_not_be_named_request_which_means_request_fields() -> None:
    doc = base()
    doc["feature_views"][0]["name"] = "request"
    doc["derived_views"][0]["inputs"] = {"a": "request:a", "n": "request:n"}
    fails(doc, "feature_views[request].name: 'request' names request fields (request:NAME)")


@pytest.mark.parametrize("scalar", [2, 2.5, True])
def test_an_unquoted_yaml_constant_is_an_expression_as_its_text_is(scalar: Any) -> None:
    dtype = "bool" if scalar is True else "float64"
    doc = with_derived(features=[{"name": "k", "dtype": dtype, "expression": scalar}])
    view = parse_definitions(doc, source="f.yaml").derived_views["dv"]
    assert view.features[0].expression == ("true" if scalar is True else repr(scalar))


@pytest.mark.parametrize("text", ["1.0e+999", "-1.5e+400", ".inf", "-.Inf", ".nan"])
def test_an_unquoted_yaml_constant_yaml_reads_as_infinite_or_nan_is_refused_named_as_written(
    text: str, tmp_path: Path
) -> None:
    f = tmp_path / "f.yaml"
    f.write_text(
        yaml.safe_dump(with_derived(features=[{"name": "k", "dtype": "float64", "expression": "@"}]))
    )
    f.write_text(f.read_text().replace("'@'", text))
    with pytest.raises(DefinitionError) as e:
        load_definitions(f)
    assert f"features[k].expression: the constant {text} is not a finite number" in str(e.value)


def test_only_a_derived_features_expression_keeps_a_non_finite_yaml_number_as_written() -> None:
    """A stream filter on an event field named ``expression`` (or a tag of that name)
    keeps the value YAML reads (review s58 round 2: its ``.nan`` became the text)."""
    import math

    from featurestore.definitions.strict_yaml import NonFiniteText, StrictLoader

    doc = yaml.load(
        "feature: {name: k, dtype: float64, expression: .inf}\n"
        "filter: {expression: .nan, name: a}\n"
        "tags: {expression: .inf, dtype: b}\n",
        StrictLoader,
    )
    assert isinstance(doc["feature"]["expression"], NonFiniteText) and doc["feature"]["expression"] == ".inf"
    assert math.isnan(doc["filter"]["expression"]) and doc["tags"]["expression"] == math.inf


def test_a_derived_feature_named_like_the_key_of_a_view_it_reads_through_another_is_refused() -> None:
    doc = base()
    doc["derived_views"].append(
        {
            "name": "dv2",
            "inputs": ["dv:q"],
            "features": [{"name": "user_id", "dtype": "float64", "expression": "q"}],
        }
    )
    fails(doc, "derived_views[dv2].features[user_id]: has the name of an entity key of a view it reads")
    doc["entities"].append({"name": "shop_id", "dtype": "int64"})  # an entity of no view it reads: valid
    doc["derived_views"][1]["features"][0]["name"] = "shop_id"
    parse_definitions(doc, source="f.yaml")


def test_definitions_refused_since_2026_12_07_still_load_from_a_snapshot_applied_before() -> None:
    entity_named = with_derived(features=[{"name": "user_id", "dtype": "float64", "expression": "a * 2"}])
    newline = with_derived(features=[{"name": "score\n", "dtype": "float64", "expression": "a"}])
    request_view = base()
    request_view["feature_views"].append({**request_view["feature_views"][0], "name": "request"})
    for doc, refused in (
        (entity_named, "has the name of an entity key"),
        (newline, "invalid name"),
        (request_view, "'request' names request fields"),
    ):
        fails(doc, refused)  # in a definitions file (validate, apply)
        parse_definitions(doc, source="stored snapshot", check_functions=False)  # what the server loads
