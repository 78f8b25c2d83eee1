"""The Dockerfile: a fixed non-root user, the extras the deploy configs need, files and a
default command that exist."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from featurestore.cli import parser
from featurestore.config import Config, load_config
from tests.support import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
# the package that brings each backend: in its extra, or (before the split into extras)
# a core dependency
EXTRA_PACKAGES = {
    "clickhouse": "clickhouse-connect",
    "etcd": "aetcd",
    "kafka": "confluent-kafka",
    "neo4j": "neo4j",
    "graphql": "strawberry-graphql",
    "otlp": "opentelemetry-exporter-otlp-proto-grpc",
}


def final_stage() -> str:
    return re.split(r"^FROM\s", DOCKERFILE, flags=re.M)[-1]


def extras() -> set[str]:
    match = re.search(r"^ARG EXTRAS=(\S+)", DOCKERFILE, re.M)
    assert match is not None
    assert '".[${EXTRAS}]"' in DOCKERFILE
    return set(match.group(1).split(","))


def needed_extras(config: Config) -> set[str]:
    needed = {sc.kind for sc in config.stores.values()} & {"clickhouse"}
    if config.registry.kind == "etcd":
        needed.add("etcd")
    if config.lineage.enabled and config.lineage.sink == "kafka":
        needed.add("kafka")
    if config.lineage.enabled and config.lineage.graph == "bolt":
        needed.add("neo4j")
    if config.lineage.enabled and config.lineage.graphql:
        needed.add("graphql")
    if config.tracing.exporter == "otlp":
        needed.add("otlp")
    return needed


def test_the_image_runs_as_a_fixed_non_root_uid() -> None:
    users = re.findall(r"^USER\s+(\S+)", final_stage(), re.M)
    assert users, "the final stage must switch user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    assert f"--uid {uid}" in final_stage()


def test_the_image_installs_the_extras_every_shipped_config_needs() -> None:
    configs = [load_config(p) for p in sorted((ROOT / "deploy" / "config").glob("*.yaml"))]
    needed = set().union(*(needed_extras(c) for c in configs))
    assert needed <= extras()
    assert "embedded" not in extras()  # the in-process ClickHouse engine stays out of the image


def test_every_extra_the_image_installs_exists() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    declared = project.get("optional-dependencies", {})
    for extra in extras():
        assert extra in declared or EXTRA_PACKAGES[extra] in core, extra


def test_copied_paths_exist_and_the_default_command_is_valid() -> None:
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", DOCKERFILE, re.M):
        for source in line.split()[:-1]:
            if "*" not in source:
                assert (ROOT / source).exists(), source
    cmd = json.loads(re.findall(r"^CMD\s+(.+)$", DOCKERFILE, re.M)[-1])
    entry = json.loads(re.findall(r"^ENTRYPOINT\s+(.+)$", DOCKERFILE, re.M)[-1])
    assert entry == ["tini", "--", "featurestore"]
    args = parser().parse_args(cmd)
    assert args.demo and args.no_clickhouse  # the demo without the embedded engine (not installed)


def test_the_python_of_the_image_satisfies_requires_python() -> None:
    version = re.search(r"^ARG PYTHON_VERSION=(\d+)\.(\d+)", DOCKERFILE, re.M)
    assert version is not None
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert low is not None
    assert (int(version.group(1)), int(version.group(2))) >= (int(low.group(1)), int(low.group(2)))


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set(Path(ROOT / ".dockerignore").read_text().split())
    assert {".venv", "data", ".git"} <= ignored


def test_the_health_check_is_the_cli_s_which_reads_the_server_s_settings() -> None:
    """Not a fixed http://127.0.0.1:8080/readyz, which fails with TLS on the serving port
    or with an admin port (tests/integration/test_cli_tls.py runs the command)."""
    check = re.search(r"^HEALTHCHECK\s[^[]*?CMD\s+(\[[^\n]+\])$", DOCKERFILE, re.M)
    assert check is not None
    argv = json.loads(check.group(1))
    # the light module (no numpy, pyarrow: tests/integration/test_cli_health_module.py),
    # with the arguments of `featurestore healthcheck`
    assert argv == ["python", "-m", "featurestore.cli.health"]
    assert parser().parse_args(["healthcheck"]).func.__name__ == "cmd_healthcheck"


def test_the_image_runs_the_cli_under_tini_as_pid_1() -> None:
    """As PID 1 the server would get no SIGTERM before its handler exists (the kernel drops
    signals PID 1 does not handle), and orphans would not be reaped."""
    entry = json.loads(re.findall(r"^ENTRYPOINT\s+(.+)$", final_stage(), re.M)[-1])
    assert entry[:2] == ["tini", "--"]
    installs = re.search(r"apt-get install\s[^\n]*?\btini\b", final_stage())
    assert installs is not None, "the final stage must install Debian's tini"
    assert final_stage().index("apt-get install") < final_stage().index("USER ")  # as root
