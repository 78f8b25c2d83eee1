"""The compose stack's one-shot bootstrap (deploy/compose/bootstrap.sh), run for real
against a real etcd registry and a real Redis, as the `bootstrap` service runs it before
the server starts; and run again, as every `docker compose up` does."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from featurestore.config import load_config
from featurestore.factories import make_registry
from tests.servers import EtcdServer, RedisServer
from tests.support import ROOT

SCRIPT = ROOT / "deploy" / "compose" / "bootstrap.sh"
DEFINITIONS = ROOT / "featurestore" / "demo" / "features.yaml"


class Stack:
    """The compose mounts of the bootstrap service, pointed at this machine's servers."""

    def __init__(self, tmp: Path, etcd: EtcdServer, redis: RedisServer) -> None:
        # a project of its own: the etcd and Redis fixtures are shared with other tests
        self.project = f"boot{uuid.uuid4().hex[:8]}"
        definitions = yaml.safe_load(DEFINITIONS.read_text())
        definitions["project"] = self.project
        self.definitions = tmp / "features.yaml"
        self.definitions.write_text(yaml.safe_dump(definitions))
        self.config = tmp / "config.yaml"
        # the compose config's registry and stores; its ClickHouse view on Redis here
        # (no ClickHouse server installs on this machine, docs/deploy.md)
        self.config.write_text(
            f"project: {self.project}\n"
            f"registry: {{kind: etcd, endpoints: ['{etcd.endpoint}']}}\n"
            f"stores: {{default: {{kind: redis, url: '{redis.url}'}}, analytics: {{kind: redis, url: '{redis.url}'}}}}\n"
            f"derived: {{cache_dir: {tmp / 'kernels'}}}\n"  # not ~/.cache: another pytest process's
        )
        self.data = tmp / "data"

    def bootstrap(self) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "FEATURESTORE_CONFIG": str(self.config),
            "DEFINITIONS": str(self.definitions),
            "DATA_DIR": str(self.data),
            "DEMO_ROWS": "2000",
            "FEATURESTORE": f"{sys.executable} -m featurestore.cli",  # word-split by the script
        }
        return subprocess.run(
            ["sh", str(SCRIPT)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )

    async def registry_state(self) -> tuple[set[str], dict[str, int]]:
        registry = make_registry(load_config(self.config))
        try:
            snapshot = await registry.current()
            assert snapshot is not None
            return set(snapshot.definitions.views), await registry.data_versions()
        finally:
            await registry.close()


@pytest.fixture
def stack(tmp_path: Path, etcd_server: EtcdServer, redis_server: RedisServer) -> Stack:
    return Stack(tmp_path, etcd_server, redis_server)


async def test_bootstrap_loads_every_view_and_runs_again_on_the_next_compose_up(stack: Stack) -> None:
    first = stack.bootstrap()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "published registry version 1" in first.stdout
    assert "2,000 rows written" in first.stdout
    views, versions = await stack.registry_state()
    assert views == {"user_profile", "user_activity", "user_transactions"}
    assert versions == dict.fromkeys(views, 1)

    again = stack.bootstrap()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes: registry version 1 already holds these definitions" in again.stdout
    views, versions = await stack.registry_state()
    assert versions == dict.fromkeys(views, 2)  # fresh data versions (the compose Redis keeps none)
