"""Packaging: the declared lower bounds cover what the committed gRPC stubs require, every
installed package is pinned (and every pin installed), the extras match the backends
that need them, and the LICENSE file is the licence the metadata declares."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from featurestore.extras import EXTRA_OF
from tests.support import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
STUBS = ROOT / "featurestore" / "v1"


def lower_bound(requirement: str) -> Version:
    req = Requirement(requirement)
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert bounds, f"{requirement}: no lower bound declared"
    return max(bounds)


def core(name: str) -> str:
    deps: list[str] = PROJECT["dependencies"]
    return next(d for d in deps if canonicalize_name(Requirement(d).name) == name)


def test_the_declared_grpcio_bound_admits_no_version_the_grpc_stubs_refuse() -> None:
    for stub in STUBS.glob("*_pb2_grpc.py"):
        match = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", stub.read_text(), re.M)
        assert match is not None, stub
        generated = Version(match.group(1))
        for package in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
            assert lower_bound(core(package)) >= generated, (stub.name, package)


def test_the_declared_protobuf_bound_admits_no_runtime_the_message_stubs_refuse() -> None:
    stubs = list(STUBS.glob("*_pb2.py"))
    assert stubs
    for stub in stubs:
        match = re.search(
            r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
            stub.read_text(),
        )
        assert match is not None, stub
        gencode = Version(".".join(match.groups()))
        assert lower_bound(core("protobuf")) >= gencode, stub.name


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin"
            out[canonicalize_name(name)] = version
    return out


def installed_closure() -> dict[str, str]:
    """Every distribution the project's requirements (core, every extra, dev) pull in,
    walked through the installed packages' own metadata: name -> installed version.
    Packages a developer installed by hand are not the project's, so not counted."""
    extras = PROJECT["optional-dependencies"]
    todo = [Requirement(r) for r in [*PROJECT["dependencies"], *(r for rs in extras.values() for r in rs)]]
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "featurestore" or (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req} is required but not installed")
        found[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted = {""} | set(req.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return found


def test_every_package_the_project_installs_is_pinned_at_its_installed_version() -> None:
    installed = installed_closure()
    pinned = pins()
    unpinned = sorted(set(installed) - set(pinned))
    assert not unpinned, f"installed but not pinned in constraints.txt: {unpinned}"
    differing = {n: (pinned[n], v) for n, v in installed.items() if n in pinned and pinned[n] != v}
    assert not differing, f"pinned version != installed version: {differing}"


def test_every_pin_is_a_package_the_project_installs() -> None:
    stale = sorted(set(pins()) - set(installed_closure()))
    assert not stale, f"constraints.txt pins packages nothing installs: {stale}"


def test_each_optional_backend_module_comes_with_the_extra_that_names_it() -> None:
    extras = PROJECT["optional-dependencies"]
    owners = importlib.metadata.packages_distributions()
    for module, extra in EXTRA_OF.items():
        assert extra in extras, extra
        named = {canonicalize_name(x) for x in re.split(r"[\[\],<>=~! ]+", " ".join(extras[extra]))}
        dists = {canonicalize_name(d) for d in owners[module.split(".")[0]]}
        assert dists & named, (module, extra, extras[extra])


def test_the_all_extra_installs_every_backend_extra() -> None:
    extras = PROJECT["optional-dependencies"]
    (all_req,) = extras["all"]
    assert set(Requirement(all_req).extras) == set(extras) - {"all", "dev"}


def test_server_backends_beyond_redis_are_not_core_dependencies() -> None:
    names = {canonicalize_name(Requirement(d).name) for d in PROJECT["dependencies"]}
    for backend in ("clickhouse-connect", "chdb", "aetcd", "confluent-kafka", "neo4j", "strawberry-graphql"):
        assert backend not in names, backend
    assert "redis" in names


@pytest.mark.parametrize("section", ["TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"])
def test_the_license_file_is_the_full_apache_2_text_the_metadata_declares(section: str) -> None:
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert re.search(r"Apache License\s+Version 2\.0, January 2004", text)
    assert section in text
    for n, title in enumerate(
        [
            "Definitions",
            "Grant of Copyright License",
            "Grant of Patent License",
            "Redistribution",
            "Submission of Contributions",
            "Trademarks",
            "Disclaimer of Warranty",
            "Limitation of Liability",
            "Accepting Warranty or Additional Liability",
        ],
        start=1,
    ):
        assert f"{n}. {title}." in text, title
    assert "END OF TERMS AND CONDITIONS" in text
