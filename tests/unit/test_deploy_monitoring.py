"""The Grafana dashboard and the Prometheus rules query only metrics the code defines, a
panel drawing seconds beside counts gives each its unit, and every alert severity reaches
an Alertmanager receiver."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client import REGISTRY

from tests.support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "featurestore.json"
RULES = sorted((ROOT / "deploy" / "prometheus").glob("*.rules.yml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def defined_series() -> set[str]:
    """Every series name featurestore/metrics.py, featurestore/overload.py,
    featurestore/quality/metrics.py, featurestore/streaming/metrics.py and
    lineage/metrics.py can expose, the supervisor's counter it writes into the
    workers' metrics files itself (featurestore/metrics_files.py), and the freshness
    gauges a server computes at scrape time (featurestore/freshness.py: no family until
    a registry is read)."""
    import featurestore.metrics
    import featurestore.overload
    import featurestore.quality.metrics
    import featurestore.streaming.metrics  # noqa: F401
    import lineage.metrics  # noqa: F401
    from featurestore.freshness import LOADED, MAX_AGE
    from featurestore.metrics_files import RESTARTS

    names = {RESTARTS + "_total", LOADED, MAX_AGE}
    for family in REGISTRY.collect():
        if family.name.startswith("featurestore"):
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    assert "featurestore_requests_total" in names and "featurestore_lineage_sink_up" in names
    return names


def rules() -> list[dict[str, Any]]:
    return [r for path in RULES for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def series_in(expr: str) -> set[str]:
    """The featurestore series a PromQL expression names (label values left out), and
    ``up`` where it is one of featurestore's scrape jobs' (prometheus.yml)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"\bfeaturestore[a-zA-Z0-9_:]*", without_strings))
    for job in re.findall(r'\bup\{[^}]*\bjob="([^"]+)"', expr):
        names.add("up" if job in scrape_jobs() else f"up (job {job!r} is not scraped)")
    return names


def scrape_jobs() -> set[str]:
    config = yaml.safe_load((DASHBOARD.parents[1] / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return found


def test_the_dashboard_loads_and_every_panel_queries_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    uid = "${" + variable["name"] + "}"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]


def _in_seconds(expr: str) -> bool:
    """Whether a query draws seconds: a ``*_seconds`` gauge or a quantile of a
    ``*_seconds`` histogram (not a rate of one's ``_count``)."""
    return re.search(r"\bfeaturestore_\w*_seconds(_bucket)?\b", expr) is not None


def _unit_of(legend: str, field_config: dict[str, Any]) -> str | None:
    unit: str | None = field_config.get("defaults", {}).get("unit")
    for override in field_config.get("overrides", []):
        matcher = override["matcher"]
        pattern = matcher["options"]
        if matcher["id"] == "byName":
            matches = pattern == legend
        elif matcher["id"] == "byRegexp":
            regex = pattern[1:-1] if pattern.startswith("/") and pattern.endswith("/") else f"^{pattern}$"
            matches = re.search(regex, legend) is not None
        else:
            continue
        for prop in override["properties"]:
            if matches and prop["id"] == "unit":
                unit = prop["value"]
    return unit


def test_a_panel_drawing_seconds_beside_counts_gives_each_series_its_unit() -> None:
    """A count drawn in seconds reads 5,000 waiting messages as "1.39 hour"; a p99 drawn
    as a count loses its unit. Series are matched by their legend, as Grafana does."""
    mixed = 0
    for panel in panels():
        targets = panel["targets"]
        if len({_in_seconds(t["expr"]) for t in targets}) < 2:
            continue
        mixed += 1
        for target in targets:
            unit = _unit_of(target["legendFormat"], panel.get("fieldConfig", {}))
            assert (unit == "s") == _in_seconds(target["expr"]), (
                panel["title"],
                target["legendFormat"],
                unit,
            )
    assert mixed >= 4  # load shedding, registry staleness, lineage and stream lag


def test_dashboard_queries_name_only_defined_metrics_and_recording_rules() -> None:
    known = defined_series() | recorded() | {"up"}
    used = set()
    for panel in panels():
        for target in panel["targets"]:
            names = series_in(target["expr"])
            assert names, f"{panel['title']}: {target['expr']}"
            assert names <= known, f"{panel['title']}: {sorted(names - known)}"
            used |= names
    assert "featurestore_requests_total" in used


def test_rules_name_only_defined_metrics_and_recording_rules() -> None:
    known = defined_series() | recorded() | {"up"}
    for rule in rules():
        names = series_in(str(rule["expr"]))
        assert names and names <= known, f"{rule.get('alert') or rule.get('record')}: {sorted(names - known)}"


def test_the_series_scan_ignores_label_values() -> None:
    expr = 'rate(featurestore_requests_total{route=~"/featurestore.v1.FeatureService/Join"}[1m])'
    assert series_in(expr) == {"featurestore_requests_total"}
    assert series_in('avg_over_time(up{job="featurestore-lineage-consumer"}[10m])') == {"up"}
    assert series_in('up{job="not-scraped"}') == {"up (job 'not-scraped' is not scraped)"}


def test_every_alert_severity_is_routed_to_a_receiver() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"] for r in config["receivers"]}
    routes = config["route"].get("routes", [])
    assert config["route"]["receiver"] in receivers
    routed = {}
    for route in routes:
        assert route["receiver"] in receivers
        for matcher in route.get("matchers", []):
            m = re.fullmatch(r'\s*severity\s*=\s*"?([\w-]+)"?\s*', matcher)
            if m:
                routed[m.group(1)] = route["receiver"]
    severities = {r["labels"]["severity"] for r in rules() if "alert" in r}
    assert severities and severities <= routed.keys()


def test_the_counter_registry_reset_reads_exists_at_zero_before_its_first_reset() -> None:
    """increase() over a series that appears at its first count reads 0: the alert
    would miss a process's first reset (review s54)."""
    import featurestore.metrics  # noqa: F401

    for cause in ("connection", "cancelled", "ended", "compacted", "reset"):
        assert (
            REGISTRY.get_sample_value("featurestore_registry_watch_lost_total", {"cause": cause}) is not None
        )
