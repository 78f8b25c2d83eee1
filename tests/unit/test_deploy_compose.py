"""deploy/docker-compose.yml holds together as written. No container engine runs here, so
the links are checked instead: start order and its health checks, mounts, secrets, ports,
the server's config, and what Prometheus, Alertmanager and Grafana are pointed at."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from featurestore.cli import parser
from featurestore.config import load_config
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
FEATURESTORE_IMAGE = "featurestore:local"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def services() -> dict[str, dict[str, Any]]:
    s: dict[str, dict[str, Any]] = compose()["services"]
    return s


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):  # the short form waits for nothing but the start
        return dict.fromkeys(deps, "service_started")
    return {name: spec["condition"] for name, spec in deps.items()}


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Mount target -> bind-mounted source in the repository."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        assert source.startswith("."), f"{volume}: only bind mounts of repository files are expected"
        found[target] = (DEPLOY / source).resolve()
    return found


def command(service: dict[str, Any]) -> list[str]:
    cmd: list[str] = service["command"]
    return cmd


def config_of(name: str) -> Path:
    service = services()[name]
    args = parser().parse_args(command(service))
    return mounts(service)[args.config]


def hosts_in_config(path: Path) -> set[str]:
    """The servers a featurestore config talks to (hostnames of every endpoint)."""
    c = load_config(path)
    urls = [*c.registry.endpoints, f"//{c.lineage.kafka.bootstrap_servers}", c.lineage.bolt.uri]
    urls += [str(s.options.get("url") or s.options.get("dsn") or "") for s in c.stores.values()]
    if c.tracing.exporter == "otlp":
        urls.append(c.tracing.otlp_endpoint)
    return {host for u in urls if u and (host := urlsplit(u).hostname)}


def test_every_depends_on_names_a_service_with_a_valid_condition() -> None:
    every = services()
    for name, service in every.items():
        for target, condition in depends_on(service).items():
            assert target in every, f"{name} depends on unknown service {target}"
            assert condition in CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                check = every[target].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{target} has no health check"
            if condition == "service_completed_successfully":
                assert every[target].get("restart", "no") == "no", f"{target} must run once"


def test_the_server_starts_after_bootstrap_and_the_healthy_backends_of_its_config() -> None:
    deps = depends_on(services()["featurestore"])
    assert deps["bootstrap"] == "service_completed_successfully"
    backends = hosts_in_config(config_of("featurestore"))
    assert backends <= services().keys()
    for host in backends:
        assert host in deps, f"featurestore does not wait for {host}"
    assert {h for h in backends if deps[h] == "service_healthy"} >= {"redis", "etcd", "clickhouse", "kafka"}
    # bootstrap's `apply` and `materialize` run on the server's config: every backend it
    # names but the traces' (no job sends any), Kafka too (each job run goes to the lineage
    # topic; one sent before Kafka is up is lost at the job's end)
    bootstrap = depends_on(services()["bootstrap"])
    traces = urlsplit(load_config(config_of("featurestore")).tracing.otlp_endpoint).hostname
    assert (
        config_of("featurestore") == mounts(services()["bootstrap"])["/etc/featurestore/config/config.yaml"]
    )
    for host in backends - {traces}:
        assert bootstrap.get(host) == "service_healthy", f"bootstrap does not wait for {host} to be healthy"
    # the lineage topic exists (the server creates it) before the consumer subscribes
    assert depends_on(services()["lineage-consumer"])["featurestore"] == "service_healthy"


def test_bootstrap_runs_its_mounted_script_on_the_servers_config_and_every_view() -> None:
    bootstrap = services()["bootstrap"]
    entry = bootstrap["entrypoint"]
    assert entry[0] == "/bin/sh"
    files = mounts(bootstrap)
    script = files[entry[1]]
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-([^}]+)\}", text, re.M))
    assert files[defaults["CONFIG"]] == config_of("featurestore")  # the server's own config
    definitions = yaml.safe_load(files[defaults["DEFINITIONS"]].read_text())
    for view in definitions["feature_views"]:
        assert f"{view['name']}:{Path(view['batch_source']['path']).name}" in text, view["name"]


def test_every_bind_mounted_file_and_secret_file_exists() -> None:
    for name, service in services().items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
    for name, secret in compose()["secrets"].items():
        assert (DEPLOY / secret["file"]).is_file(), name


def test_published_host_ports_do_not_clash() -> None:
    published = [
        str(port).split(":")[0] for service in services().values() for port in service.get("ports", [])
    ]
    assert len(published) == len(set(published)), published
    server = services()["featurestore"]
    config = load_config(config_of("featurestore"))
    assert f"{config.http.port}:{config.http.port}" in server["ports"]
    assert f"{config.grpc.port}:{config.grpc.port}" in server["ports"]


def test_featurestore_containers_run_valid_commands_on_the_mounted_config() -> None:
    for name, service in services().items():
        if service.get("image") != FEATURESTORE_IMAGE or "command" not in service:
            continue
        args = parser().parse_args(command(service))
        assert mounts(service)[args.config] == DEPLOY / "config" / "production.yaml", name
        load_config(mounts(service)[args.config])


def test_secret_files_named_in_the_environment_are_the_services_own_secrets() -> None:
    declared = compose()["secrets"]
    checked = 0
    for name, service in services().items():
        own = set(service.get("secrets", []))
        assert own <= declared.keys(), name
        for var, value in service.get("environment", {}).items():
            if var.endswith("_FILE"):
                assert value.startswith("/run/secrets/") and value.rpartition("/")[2] in own, f"{name} {var}"
                checked += 1
    assert checked >= 4
    password = (DEPLOY / declared["neo4j-password"]["file"]).read_text()
    assert (DEPLOY / declared["neo4j-auth"]["file"]).read_text() == f"neo4j/{password}"


def test_no_credential_is_written_into_the_environment_or_the_server_config() -> None:
    for name, service in services().items():
        for var in service.get("environment", {}):
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH(?!_ANONYMOUS)", var):
                assert var.endswith("_FILE"), f"{name}: {var} holds a credential; mount a secret file"
    bolt = yaml.safe_load((DEPLOY / "config" / "production.yaml").read_text())["lineage"]["bolt"]
    assert "password" not in bolt


def test_dollar_signs_are_escaped_from_compose_interpolation() -> None:
    text = COMPOSE.read_text()
    assert re.findall(r"(?<!\$)\$(?!\$)", text.replace("$$", "")) == []


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in services().items():
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: {image}"


def test_prometheus_scrapes_the_servers_and_alerts_to_alertmanager() -> None:
    every = services()
    prometheus = every["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in command(prometheus) if a.startswith("--config.file="))
    directory, _, filename = config_path.rpartition("/")
    source = mounts(prometheus)[directory]
    config = yaml.safe_load((source / filename).read_text())
    for rule_file in config["rule_files"]:
        assert (source / rule_file).is_file(), rule_file
    ports = {
        "featurestore": load_config(config_of("featurestore")).http.port,
        "lineage-consumer": parser().parse_args(command(every["lineage-consumer"])).metrics_port,
        "stream-processor": parser().parse_args(command(every["stream-processor"])).metrics_port,
    }
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    assert sorted(targets) == sorted(f"{host}:{port}" for host, port in ports.items())
    [alertmanagers] = config["alerting"]["alertmanagers"]
    [target] = alertmanagers["static_configs"][0]["targets"]
    host, _, port = target.partition(":")
    assert f"{port}:{port}" in every[host]["ports"]
    am_config = next(a.split("=", 1)[1] for a in command(every[host]) if a.startswith("--config.file="))
    assert mounts(every[host])[am_config] == DEPLOY / "alertmanager" / "alertmanager.yml"


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    files = mounts(grafana)
    provisioning = files["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [datasource] = datasources["datasources"]
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert url.hostname == "prometheus" and f"{url.port}:{url.port}" in services()["prometheus"]["ports"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "featurestore.yml").read_text())["providers"]
    dashboards = [t for t in files if t.startswith(provider["options"]["path"] + "/")]
    assert [files[t] for t in dashboards] == [DEPLOY / "grafana" / "featurestore.json"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in dashboards


def test_the_server_gets_longer_than_its_drain_to_stop() -> None:
    from featurestore.process import DRAIN_SECONDS

    grace = services()["featurestore"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > DRAIN_SECONDS  # compose's default 10 s is not


def test_the_stream_processor_runs_a_stream_view_of_its_mounted_definitions_and_listens_for_prometheus() -> (
    None
):
    from featurestore.definitions.parser import load_definitions

    every = services()
    processor = every["stream-processor"]
    args = parser().parse_args(command(processor))
    definitions = load_definitions(mounts(processor)[args.definitions])
    assert args.view and all(definitions.views[v].stream is not None for v in args.view)
    assert args.metrics_host == "0.0.0.0"  # the default 127.0.0.1 is unreachable from Prometheus
    config = load_config(mounts(processor)[args.config])
    assert urlsplit(f"//{config.stream.kafka.bootstrap_servers}").hostname in depends_on(processor)
    for view in args.view:
        store = config.stores[definitions.views[view].online_store]
        assert store.kind == "redis" and urlsplit(store.options["url"]).hostname in depends_on(processor)


def test_the_featurestore_containers_health_checks_are_the_cli_s_which_never_go_through_a_proxy() -> None:
    """Not inline urllib snippets: urllib's default opener sends even 127.0.0.1 to the
    HTTP_PROXY Docker may hand a container (tests/unit/test_healthcheck_proxy.py)."""
    checked = []
    for name, service in services().items():
        check = service.get("healthcheck", {})
        if service.get("image") != FEATURESTORE_IMAGE or check.get("disable"):
            continue
        assert check["test"][:4] == ["CMD", "python", "-m", "featurestore.cli.health"], name
        args = parser().parse_args(["healthcheck", *check["test"][4:]])
        if name == "featurestore":  # /readyz where the server's own config puts it
            assert args.url is None and mounts(service)[args.config] == config_of("featurestore")
        else:  # the /metrics its command serves
            url = urlsplit(args.url)
            assert (url.hostname, url.port, url.path) == (
                "127.0.0.1", parser().parse_args(command(service)).metrics_port, "/metrics"
            ), name  # fmt: skip
        checked.append(name)
    assert {"featurestore", "lineage-consumer", "stream-processor"} <= set(checked)
