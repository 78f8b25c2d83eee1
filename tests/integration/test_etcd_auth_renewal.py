"""The etcd registry authenticating again when etcd no longer takes its auth token,
against a real etcd with authentication on. aetcd authenticates once per client, so a
token etcd dropped (a simple token when the user's password is set: "invalid auth token")
or outdated (a JWT issued before a change of users, roles or permissions: "revision of
auth store is old") failed every call and every new watch, for good: the server stopped
following the registry and reported it disconnected. Both token kinds etcd has."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest

from featurestore.errors import Unavailable
from featurestore.registry.etcd import EtcdRegistry
from featurestore.registry.etcd_client import EtcdAccess
from tests.etcd_proxies import settle, watch_lost
from tests.servers import EtcdServer
from tests.support import eventually

WAIT_S = 20.0  # for a change to come through: a bound on a hang, not a timing assert


class AuthEtcdServer(EtcdServer):
    """etcd with authentication on (user ``root``) and the given ``--auth-token``."""

    USER, PASSWORD = "root", "root-pw-5c1e"

    def __init__(self, workdir: Path, token: str) -> None:
        super().__init__(workdir)
        self.token = token

    def command(self) -> list[str]:
        return [*super().command(), "--auth-token", self.token]

    def etcdctl(self, *args: str, auth: bool = True, stdin: str | None = None) -> None:
        user = ["--user", f"{self.USER}:{self.PASSWORD}"] if auth else []
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint, *user, *args], input=stdin,
            env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module", params=["simple", "jwt"])
def auth_etcd(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthEtcdServer]:
    workdir = tmp_path_factory.mktemp(f"etcd-{request.param}")
    token = "simple"
    if request.param == "jwt":
        key = workdir / "jwt.key"
        key.write_bytes(os.urandom(32))
        token = f"jwt,priv-key={key},sign-method=HS256,ttl=1h"
    server = AuthEtcdServer(workdir, token).start()
    try:
        server.etcdctl("user", "add", f"{server.USER}:{server.PASSWORD}", auth=False)
        server.etcdctl("user", "grant-role", server.USER, "root", auth=False)
        server.etcdctl("auth", "enable", auth=False)
        yield server
    finally:
        server.stop()


def registry_user(etcd: AuthEtcdServer, project: str, prefix: str) -> EtcdAccess:
    """A user (and its role) allowed to read ``/featurestore/{project}/{prefix}`` only."""
    user = f"u{uuid.uuid4().hex[:6]}"
    etcd.etcdctl("role", "add", user)
    etcd.etcdctl(
        "role", "grant-permission", "--prefix=true", user, "read", f"/featurestore/{project}/{prefix}"
    )
    etcd.etcdctl("user", "add", f"{user}:pw-{user}")
    etcd.etcdctl("user", "grant-role", user, user)
    return EtcdAccess(user, f"pw-{user}")


def grant_project(etcd: AuthEtcdServer, project: str, access: EtcdAccess) -> None:
    """A second role reading the whole project, granted to the user, whose password is
    then set again (unchanged): etcd drops the user's simple tokens, and every JWT
    issued before is outdated."""
    role = f"r{uuid.uuid4().hex[:6]}"
    etcd.etcdctl("role", "add", role)
    etcd.etcdctl("role", "grant-permission", "--prefix=true", role, "read", f"/featurestore/{project}/")
    etcd.etcdctl("user", "grant-role", access.username, role)
    etcd.etcdctl("user", "passwd", access.username, "--interactive=false", stdin=access.password + "\n")


async def test_a_watch_etcd_cancels_for_an_auth_token_it_no_longer_takes_is_watched_again_with_a_new_token(
    auth_etcd: AuthEtcdServer,
) -> None:
    """The user may not watch the project's prefix yet: etcd cancels each watch
    ("permission denied"). Granting it a role that may also outdates or drops the
    registry's token: the next watches are cancelled for the token until the registry
    authenticates again, and then it sees the change made meanwhile. (No heartbeat: the
    watch alone must authenticate again.)"""
    project = f"p{uuid.uuid4().hex[:8]}"
    access = registry_user(auth_etcd, project, "registry/")
    reg = EtcdRegistry([auth_etcd.endpoint], project, access=access, heartbeat_interval=3600)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    before = watch_lost("cancelled")
    pending: asyncio.Future[None] | None = None
    try:
        await asyncio.wait_for(anext(changes), WAIT_S)  # armed; the next step opens the watch
        pending = asyncio.ensure_future(anext(changes))
        await eventually(lambda: watch_lost("cancelled") > before, WAIT_S, "the watch etcd refuses to count")
        auth_etcd.etcdctl("put", f"/featurestore/{project}/data/v/current", "4")  # missed so far
        grant_project(auth_etcd, project, access)
        await asyncio.wait_for(pending, WAIT_S)
        assert (await reg.data_versions()) == {"v": 4}
    finally:
        await settle(pending, changes)
        await reg.close()


async def test_a_registry_call_etcd_refuses_for_its_auth_token_authenticates_again_for_the_next_calls(
    auth_etcd: AuthEtcdServer,
) -> None:
    project = f"p{uuid.uuid4().hex[:8]}"
    access = registry_user(auth_etcd, project, "")
    reg = EtcdRegistry([auth_etcd.endpoint], project, access=access)
    auth_etcd.etcdctl("put", f"/featurestore/{project}/data/v/current", "3")
    try:
        assert (await reg.data_versions()) == {"v": 3}
        grant_project(auth_etcd, project, access)  # the registry's token no longer holds

        async def answers() -> bool:
            with contextlib.suppress(Unavailable):
                return (await reg.data_versions()) == {"v": 3}
            return False

        await eventually(answers, WAIT_S, "the registry to read again with a new token")
        assert reg.health().connected
    finally:
        await reg.close()


async def test_a_watch_whose_client_a_failed_call_replaced_follows_on_the_new_client(
    auth_etcd: AuthEtcdServer,
) -> None:
    """The heartbeat finds the token outdated and replaces the client: grpc.aio ends the
    watch's read on the closed channel with CancelledError, which ended the change feed
    as if the server were shutting it down. It is a lost connection: watched again."""
    project = f"p{uuid.uuid4().hex[:8]}"
    key = f"/featurestore/{project}/data/v/current"
    access = registry_user(auth_etcd, project, "")
    reg = EtcdRegistry([auth_etcd.endpoint], project, access=access, heartbeat_interval=0.2)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    pending: asyncio.Future[None] | None = None
    try:
        await asyncio.wait_for(anext(changes), WAIT_S)  # armed
        pending = asyncio.ensure_future(anext(changes))
        auth_etcd.etcdctl("put", key, "1")
        await asyncio.wait_for(pending, WAIT_S)  # the watch is open
        pending = asyncio.ensure_future(anext(changes))
        before = watch_lost("connection")
        grant_project(auth_etcd, project, access)
        await eventually(
            lambda: watch_lost("connection") > before, WAIT_S, "the watch cut off by the new client"
        )
        auth_etcd.etcdctl("put", key, "2")
        await asyncio.wait_for(pending, WAIT_S)
        assert (await reg.data_versions()) == {"v": 2}
    finally:
        await settle(pending, changes)
        await reg.close()


async def test_a_registry_user_etcd_refuses_to_read_is_counted_as_cancelled_watches_never_a_lost_connection(
    auth_etcd: AuthEtcdServer,
) -> None:
    """The user may read the project's data/ only, not its registry/: etcd denies the read
    each watch begins with. Counted as a lost connection (the registry reported
    disconnected) before it was PERMISSION_DENIED; after, it must neither end the change
    feed nor its heartbeat: once the role may, the feed is armed and the heartbeat keeps
    the registry's contact fresh."""
    project = f"p{uuid.uuid4().hex[:8]}"
    access = registry_user(auth_etcd, project, "data/")
    reg = EtcdRegistry([auth_etcd.endpoint], project, access=access, heartbeat_interval=0.2)
    changes: AsyncGenerator[None, None] = reg.changes()  # type: ignore[assignment]
    before, lost = watch_lost("cancelled"), watch_lost("connection")
    armed = asyncio.ensure_future(anext(changes))
    pending: asyncio.Future[None] | None = armed
    try:
        await eventually(lambda: watch_lost("cancelled") >= before + 3, WAIT_S, "the refused reads to count")
        assert not armed.done() and watch_lost("connection") == lost
        assert reg.health().connected  # etcd answers: it refuses
        grant_project(auth_etcd, project, access)
        await asyncio.wait_for(armed, WAIT_S)
        pending = None
        await asyncio.sleep(1.5)  # nothing changes: only the heartbeat reads
        assert reg.health().seconds_since_contact < 1.0 and reg.health().connected
    finally:
        await settle(pending, changes)
        await reg.close()
