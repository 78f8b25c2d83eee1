"""deploy/k8s/ validates against the Kubernetes schemas (kubernetes-validate, offline) and
holds together: Secrets, security context, writable paths, probes, drain, PDB, HPA."""

from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from featurestore.cli import parser
from tests.support import ROOT

K8S = ROOT / "deploy" / "k8s"
# The cluster version the manifests are written for; kubernetes-validate ships its
# schemas, so the check runs offline. Strict: an unknown (misspelt) field fails.
KUBERNETES_VERSION = "1.31.0"


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}"
    return matches[0]


def deployments() -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == "Deployment"]


def server() -> dict[str, Any]:
    return find("Deployment", "featurestore")


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def image_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile's USER must be numeric (runAsNonRoot cannot check a name)"
    return int(users[-1].split(":")[0])


def test_every_manifest_validates_against_the_pinned_kubernetes_schemas() -> None:
    errors = []
    for doc in manifests():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message}")
    assert errors == []
    kinds = sorted(d["kind"] for d in manifests())
    for kind in ("ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"):
        assert kind in kinds
    assert "HorizontalPodAutoscaler" in kinds


def test_strict_validation_rejects_a_misspelt_field() -> None:
    doc = copy.deepcopy(server())
    pod(doc)["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_pods_run_as_the_image_user_non_root_on_a_read_only_root_filesystem() -> None:
    for deployment in deployments():
        spec = pod(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == image_uid() != 0
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, c["name"]
            assert ctx["allowPrivilegeEscalation"] is False, c["name"]
            assert ctx["capabilities"]["drop"] == ["ALL"], c["name"]


def test_pods_get_no_service_link_variables_which_would_set_the_short_port_names() -> None:
    """A Service named featurestore-grpc or featurestore-http would set
    FEATURESTORE_GRPC_PORT / FEATURESTORE_HTTP_PORT=tcp://IP:PORT in every pod."""
    for deployment in deployments():
        assert pod(deployment).get("enableServiceLinks") is False, deployment["metadata"]["name"]


def test_the_writable_paths_of_the_server_are_empty_dirs() -> None:
    spec = pod(server())
    container = spec["containers"][0]
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty}
    dockerfile = (ROOT / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.M)[-1]
    data_dir = re.search(r"FEATURESTORE_DATA_DIR=(\S+)", dockerfile)
    assert data_dir is not None
    # the supervisor's PROMETHEUS_MULTIPROC_DIR is a mkdtemp() under the temp dir
    from featurestore.supervisor import Supervisor

    sup = Supervisor(1, ["true"])  # (never run: its directory and owner lock undone here)
    metrics_dir = Path(sup.metrics_dir)
    shutil.rmtree(metrics_dir)  # (it holds the supervisor.pid its owner locks)
    os.close(sup._owner)
    assert metrics_dir.parent == Path(tempfile.gettempdir())
    needed = {"/tmp", workdir, data_dir.group(1)}
    assert needed <= writable
    # derived kernels: modules (derived.cache_dir) and numba's machine code on one volume
    config = yaml.safe_load(find("ConfigMap", "featurestore-config")["data"]["config.yaml"])
    kernel_dirs = [Path(config["derived"]["cache_dir"]), Path(env(container)["NUMBA_CACHE_DIR"])]
    mounts = {next((w for w in writable if d.is_relative_to(w)), None) for d in kernel_dirs}
    assert len(mounts) == 1 and None not in mounts, kernel_dirs
    for name in ("PROMETHEUS_MULTIPROC_DIR", "TMPDIR"):
        value = env(container).get(name)
        assert value is None or any(value.startswith(w) for w in writable), name
    consumer = pod(find("Deployment", "featurestore-lineage-consumer"))
    assert "/tmp" in {m["mountPath"] for m in consumer["containers"][0]["volumeMounts"]}


def test_secret_files_named_in_the_environment_are_mounted_from_defined_keys() -> None:
    secrets = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Secret"}
    assert "featurestore-credentials" in secrets
    checked = 0
    for deployment in deployments():
        spec = pod(deployment)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
            for name, value in env(c).items():
                if not name.endswith("_FILE"):
                    continue
                directory, _, filename = value.rpartition("/")
                volume = mounts.get(directory)
                assert volume is not None and "secret" in volume, f"{name}: {directory} is no Secret mount"
                items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
                assert filename in items, f"{name}: {filename} is not projected"
                secret = secrets.get(volume["secret"]["secretName"])
                if secret is not None:
                    assert items[filename] in secret["stringData"], f"{name}: no key {items[filename]}"
                else:  # the TLS Secret comes from cert-manager or `kubectl create secret tls`
                    assert items[filename] in ("tls.crt", "tls.key")
                checked += 1
    assert checked >= 5


def test_the_config_map_holds_no_credentials() -> None:
    config = yaml.safe_load(find("ConfigMap", "featurestore-config")["data"]["config.yaml"])
    found = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                secret_key = re.search(r"password|token|secret", str(key)) and not str(key).endswith("_file")
                if secret_key and value:
                    found.append(f"{where}{key}")
                walk(value, f"{where}{key}.")
        elif isinstance(node, str) and re.search(r"://[^/@\s]*:[^/@\s]+@", node):
            found.append(f"{where}: a URL with a password")

    walk(config, "")
    assert found == []


def test_containers_run_valid_commands_on_the_mounted_config() -> None:
    config_map = find("ConfigMap", "featurestore-config")
    for deployment in deployments():
        spec = pod(deployment)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            args = parser().parse_args(c["args"])
            directory, _, filename = args.config.rpartition("/")
            mount = next(m for m in c["volumeMounts"] if m["mountPath"] == directory)
            assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
            assert filename in config_map["data"]


def test_probes_use_named_ports_and_a_startup_probe_holds_off_liveness() -> None:
    for deployment in deployments():
        for c in pod(deployment)["containers"]:
            ports = {p["name"] for p in c["ports"]}
            assert "startupProbe" in c and "livenessProbe" in c, c["name"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in ports, f"{c['name']} {probe}"
    container = pod(server())["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_grace_period_covers_the_pre_stop_delay_and_the_drain() -> None:
    from featurestore.process import DRAIN_SECONDS

    spec = pod(server())
    command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    delay = int(command[1])
    assert delay >= 1
    assert spec["terminationGracePeriodSeconds"] > delay + DRAIN_SECONDS


def test_every_container_requests_cpu_and_memory_and_limits_memory() -> None:
    for deployment in deployments():
        for c in pod(deployment)["containers"]:
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]


def test_the_autoscaler_owns_the_replicas_and_the_disruption_budget_leaves_capacity() -> None:
    deployment = server()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = find("HorizontalPodAutoscaler", "featurestore")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "featurestore")
    assert "replicas" not in deployment["spec"]  # `kubectl apply` must not reset the HPA's count
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    pdb = find("PodDisruptionBudget", "featurestore")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 2  # two keep serving


def test_services_select_the_pods_and_a_headless_service_carries_grpc() -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in deployments()}
    headless = []
    for service in (d for d in manifests() if d["kind"] == "Service"):
        selected = [
            t for t in pods.values() if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        assert selected, service["metadata"]["name"]
        ports = {p["name"] for t in selected for c in t["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port['targetPort']}"
        if service["spec"].get("clusterIP") == "None":
            headless.append({p["name"] for p in service["spec"]["ports"]})
    assert headless == [{"grpc"}]
    text = (K8S / "featurestore.yaml").read_text()
    assert "round_robin" in text and "ClusterIP" in text  # the load-balancing note


def test_the_docs_say_the_manifests_backend_connections_are_plaintext() -> None:
    """docs/security.md once said the deploy files' traffic was encrypted while the
    ConfigMap dials every backend in plaintext: each plaintext scheme it uses is named
    where the docs describe the manifests, and the manifest says so too."""
    config = yaml.safe_load(find("ConfigMap", "featurestore-config")["data"]["config.yaml"])
    plaintext = set()
    if any(e.startswith("http://") for e in config["registry"]["endpoints"]):
        plaintext.add("`http://`")
    if config["stores"]["default"]["url"].startswith("redis://"):
        plaintext.add("`redis://`")
    if config["lineage"]["kafka"].get("security_protocol", "plaintext") == "plaintext":
        plaintext.add("`plaintext`")
    if config["lineage"]["bolt"]["uri"].startswith("bolt://") and not config["lineage"]["bolt"].get(
        "ca_file"
    ):
        plaintext.add("`bolt://`")
    intro = (ROOT / "docs" / "security.md").read_text().split("## Secrets")[0]
    assert "are plaintext" in intro and all(scheme in intro for scheme in plaintext), plaintext
    assert not plaintext or "PLAINTEXT" in (K8S / "featurestore.yaml").read_text()


def test_service_ports_of_a_server_doing_its_own_tls_declare_tls_so_a_mesh_passes_them_through() -> None:
    """`http` / `grpc` tell a mesh sidecar (Istio) to parse plaintext: it would fail the
    client's TLS. Without the server's TLS, the plaintext names (docs/deploy.md)."""
    container = pod(server())["containers"][0]
    tls = "FEATURESTORE_TLS__CERT_FILE" in env(container)
    expected = {"http": "https", "grpc": "tls"} if tls else {"http": "http", "grpc": "grpc"}
    labels = server()["spec"]["template"]["metadata"]["labels"]
    checked = 0
    for service in (d for d in manifests() if d["kind"] == "Service"):
        if service["spec"]["selector"].items() <= labels.items():
            for port in service["spec"]["ports"]:
                assert port.get("appProtocol") == expected[port["targetPort"]], service["metadata"]["name"]
                checked += 1
    assert checked >= 3


def test_the_certificate_names_in_the_docs_cover_every_name_the_docs_and_the_manifest_dial() -> None:
    """gRPC checks the certificate against the dialled host: a name missing from it fails
    every call UNAVAILABLE ("No match found for server name")."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "kind: Certificate" in b]
    certificate = yaml.safe_load(block)
    names = set(certificate["spec"]["dnsNames"])
    namespace = certificate["metadata"]["namespace"]
    tls_volume = next(v for v in pod(server())["volumes"] if v["name"] == "tls")
    assert certificate["spec"]["secretName"] == tls_volume["secret"]["secretName"]
    dialled = set()
    for text in (docs, (K8S / "featurestore.yaml").read_text()):
        dialled |= {h.replace("<namespace>", namespace) for h in re.findall(r"dns:///([\w.<>-]+):\d+", text)}
    assert dialled and dialled <= names, dialled - names
    services = {d["metadata"]["name"] for d in manifests() if d["kind"] == "Service"}
    for service in services:  # each Service by every name that resolves to it in the cluster
        forms = [
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local",
        ]
        assert set(forms) <= names, service


def test_the_rotation_notes_say_a_password_change_needs_a_rollout_of_each_deployment_using_it() -> None:
    """Only the tokens file is read again by running pods (auth.py); a password is read at
    start, and a running worker sends the old one on every reconnect."""
    notes = [(K8S / "secret.yaml").read_text(), (ROOT / "docs" / "deploy.md").read_text()]
    rolled = 0
    for deployment in deployments():
        keys = {
            item["key"]
            for volume in pod(deployment)["volumes"]
            if volume.get("secret", {}).get("secretName") == "featurestore-credentials"
            for item in volume["secret"]["items"]
        }
        if keys - {"tokens"}:
            name = deployment["metadata"]["name"]
            for text in notes:
                assert re.search(rf"rollout restart[^`]*deployment/{name}(?![\w-])", text), name
            rolled += 1
    assert rolled == 2
