"""The etcd registry end to end on a real etcd: concurrent applies from separate
processes, hot swap under continuous load, history/rollback, canary, data versions,
and an etcd outage under load."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from featurestore.definitions.parser import load_definitions
from featurestore.errors import Conflict
from featurestore.registry.etcd import EtcdRegistry
from tests.servers import EtcdServer, RedisServer
from tests.support import ROOT, Background, ServerProcess, http_get, wait_until

BASE = """
project: {project}
entities: [{{name: user_id, dtype: int64}}]
feature_views:
  - name: user_profile
    entities: [user_id]
    ttl: 3650d
    batch_source: {{path: {users}}}
    features:
      - {{name: age, dtype: int64}}
      - {{name: country, dtype: string}}
{extra}
feature_services:
  - name: ranker
    features: [user_profile:age{service_extra}]
"""
ACTIVITY = """
  - name: user_activity
    entities: [user_id]
    batch_source: {{path: {users}}}
    features:
      - {{name: ctr_30d, dtype: float64}}
"""


class Env:
    def __init__(self, tmp: Path, etcd: EtcdServer, users: Path) -> None:
        self.tmp = tmp
        self.etcd = etcd
        self.users = users
        self.project = f"p{uuid.uuid4().hex[:8]}"
        self.config = tmp / "config.yaml"
        self.config.write_text(
            f"project: {self.project}\nregistry: {{kind: etcd, endpoints: ['{etcd.endpoint}']}}\n"
            "stores: {default: {kind: memory}}\n"
        )

    def defs(self, name: str, *, activity: bool = False, service_extra: str = "", age: str = "int64") -> Path:
        text = BASE.format(
            project=self.project,
            users=self.users,
            extra=ACTIVITY.format(users=self.users) if activity else "",
            service_extra=service_extra,
        ).replace("{name: age, dtype: int64}", f"{{name: age, dtype: {age}}}")
        path = self.tmp / f"{name}.yaml"
        path.write_text(text)
        return path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "featurestore.cli", *args[:1], *_config_args(args, self.config)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip


def _config_args(args: tuple[str, ...], config: Path) -> list[str]:
    # `registry` and `canary` take --config before their subcommand
    if args[0] in ("registry", "canary"):
        return ["--config", str(config), *args[1:]]
    return [*args[1:], "--config", str(config)]


@pytest.fixture
def env(tmp_path: Path, etcd_server: EtcdServer, demo_dir: Path) -> Env:
    return Env(tmp_path, etcd_server, demo_dir / "users.parquet")


def test_apply_diff_history_show_rollback(env: Env) -> None:
    out = env.cli("apply", str(env.defs("v1")))
    assert out.returncode == 0, out.stderr
    assert (
        "+ feature_view user_profile: 2 features" in out.stdout
        and "published registry version 1 (was None)" in out.stdout
    )
    again = env.cli("apply", str(env.defs("v1")))
    assert "no changes" in again.stdout
    v2 = env.cli("apply", str(env.defs("v2", activity=True, service_extra=", user_activity:ctr_30d")))
    assert (
        "+ feature_view user_activity" in v2.stdout
        and "~ feature_service ranker: +user_activity:ctr_30d" in v2.stdout
    )
    bad = env.cli("apply", str(env.defs("v3", activity=True, age="float64")))
    assert (
        bad.returncode == 2 and "feature age dtype int64 -> float64" in bad.stderr and "--force" in bad.stderr
    )
    # the refused diff is printed too (it was only the error line: the docs said otherwise)
    assert "! feature_view user_profile: feature age dtype int64 -> float64 (incompatible)" in bad.stdout
    dry = env.cli("apply", str(env.defs("v3", activity=True, age="float64")), "--dry-run")
    assert "! feature_view user_profile: feature age dtype int64 -> float64 (incompatible)" in dry.stdout
    assert "dry run: nothing published" in dry.stdout and "(current: 2)" in dry.stdout
    hist = env.cli("registry", "history")
    lines = hist.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("*    2")  # newest first
    show = json.loads(env.cli("registry", "show", "1").stdout)
    assert show["version"] == 1 and [v["name"] for v in show["definitions"]["feature_views"]] == [
        "user_profile"
    ]
    diff = env.cli("registry", "diff", "1", "2")
    assert "+ feature_view user_activity" in diff.stdout
    rb = env.cli("registry", "rollback", "1")
    assert (
        rb.returncode == 0
        and "- feature_view user_activity" in rb.stdout
        and "version 3 holds version 1" in rb.stdout
    )
    assert re.search(r"^\*\s+3 .*rollback to version 1$", env.cli("registry", "history").stdout, re.M)


RACER = """
import asyncio, os, pathlib, sys
from featurestore.errors import Conflict
from featurestore.definitions.parser import load_definitions
from featurestore.registry.etcd import EtcdRegistry

endpoint, project, defs_path, barrier, n = sys.argv[1:6]

async def main():
    registry = EtcdRegistry([endpoint], project)
    current = await registry.current()
    pathlib.Path(barrier, str(os.getpid())).touch()
    while len(list(pathlib.Path(barrier).iterdir())) < int(n):  # a barrier: all have read current
        await asyncio.sleep(0.01)
    try:
        snap = await registry.publish(load_definitions(defs_path), expected_version=current.version)
        print("WON", snap.version)
    except Conflict as e:
        print("CONFLICT", e.message)
    await registry.close()

asyncio.run(main())
"""


def test_concurrent_applies_from_separate_processes(env: Env) -> None:
    """Real concurrent clients in separate processes all read current, then all
    publish: exactly one wins, the others get a conflict telling them to retry."""
    assert env.cli("apply", str(env.defs("base"))).returncode == 0
    n = 6
    barrier = env.tmp / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                env.etcd.endpoint,
                env.project,
                str(env.defs(f"c{i}", activity=True, service_extra=", user_profile:country" * (i % 2))),
                str(barrier),
                str(n),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(n)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    won = [o for o in outputs if o.startswith("WON")]
    conflicts = [o for o in outputs if o.startswith("CONFLICT")]
    assert len(won) == 1 and won[0] == "WON 2", outputs
    assert len(conflicts) == n - 1
    assert all("re-read the registry and retry" in c for c in conflicts)
    assert len(env.cli("registry", "history").stdout.splitlines()) == 2  # nothing left behind by the losers


def test_concurrent_cli_applies_publish_once_each_or_are_told_to_retry(env: Env) -> None:
    """Operators applying at the same moment: every publication lands whole as its own
    version, or its `apply` exits 2 saying to re-read; nothing is lost or merged."""
    assert env.cli("apply", str(env.defs("base"))).returncode == 0
    files = [
        env.defs(f"c{i}", activity=True, service_extra=extra)
        for i, extra in enumerate(
            (
                "",
                ", user_activity:ctr_30d",
                ", user_profile:country",
                ", user_profile:country, user_activity:ctr_30d",
            )
        )
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "featurestore.cli", "apply", str(f), "--config", str(env.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for f in files
    ]
    outcomes = [
        (p.wait(60), p.stdout.read() if p.stdout else "", p.stderr.read() if p.stderr else "") for p in procs
    ]
    for code, _, err in outcomes:
        assert code in (0, 2), err
        if code == 2:
            assert "re-read the registry and retry" in err, err
    published = sorted(
        int(m) for _, out, _ in outcomes for m in re.findall(r"published registry version (\d+)", out)
    )
    assert published and published == list(range(2, 2 + len(published)))  # one version each, no gaps
    history = env.cli("registry", "history").stdout
    assert re.search(rf"^\*\s+{published[-1]} ", history, re.M)


def test_a_publish_against_a_stale_version_is_refused(env: Env) -> None:
    """The deterministic half of the race above, through the port."""
    assert env.cli("apply", str(env.defs("base"))).returncode == 0

    async def race() -> str:
        reg = EtcdRegistry([env.etcd.endpoint], env.project)
        try:
            await reg.publish(load_definitions(env.defs("x", activity=True)), expected_version=1)
            with pytest.raises(Conflict) as info:
                await reg.publish(load_definitions(env.defs("y")), expected_version=1)
            assert [s.version for s in [await reg.current()] if s] == [2]  # the loser left nothing
            return info.value.message
        finally:
            await reg.close()

    assert "re-read the registry and retry" in asyncio.run(race())


def test_canary_start_promote_abort(env: Env) -> None:
    assert env.cli("apply", str(env.defs("base"))).returncode == 0
    cand = env.defs("cand", activity=True, service_extra=", user_activity:ctr_30d")
    start = env.cli("canary", "start", "ranker", "--file", str(cand), "--share", "0.3")
    assert start.returncode == 0 and "serves 30.0% of user_id from version 2 (current: 1)" in start.stdout
    assert "ranker: 30.0% of user_id on version 2 (base 1)" in env.cli("canary", "status").stdout
    other = env.cli("canary", "start", "ranker", "--file", str(cand), "--share", "0.3", "--entity", "shop")
    assert other.returncode == 2 and "entity 'shop' keys no feature of service 'ranker'" in other.stderr
    twice = env.cli("canary", "start", "ranker", "--file", str(cand), "--share", "0.5")
    assert twice.returncode == 2 and "already has a canary" in twice.stderr
    abort = env.cli("canary", "abort", "ranker")
    assert abort.returncode == 0 and "no canaries" in env.cli("canary", "status").stdout
    assert env.cli("canary", "start", "ranker", "--file", str(cand), "--share", "0.3").returncode == 0
    promote = env.cli("canary", "promote", "ranker")
    assert promote.returncode == 0 and "version 3 is current (was 1)" in promote.stdout
    assert re.search(r"^\*\s+3 ", env.cli("registry", "history").stdout, re.M)


def test_history_limit_prune_and_a_malformed_canary_record_from_the_cli(env: Env) -> None:
    for n in range(1, 6):
        extra = ", user_profile:country" if n % 2 else ""
        assert env.cli("apply", str(env.defs(f"h{n}", service_extra=extra)), "-m", f"v{n}").returncode == 0
    hist = env.cli("registry", "history", "--limit", "2").stdout.splitlines()
    assert hist[0].split()[:2] == ["*", "5"] and hist[1].split()[0] == "4" and hist[1].endswith("v4")
    assert hist[2] == "(3 older snapshots not shown: --limit 0 lists every one)"
    dry = env.cli("registry", "prune", "--keep", "2", "--dry-run")
    assert dry.returncode == 0 and "would delete 3 snapshots: 1, 2, 3" in dry.stdout
    pruned = env.cli("registry", "prune", "--keep", "2").stdout
    assert pruned == "deleted 3 snapshots: 1, 2, 3 (etcd frees the space after a compaction and defrag)\n"
    assert len(env.cli("registry", "history", "--limit", "0").stdout.splitlines()) == 2
    zero = env.cli("registry", "prune", "--keep", "0")
    assert zero.returncode == 2 and "keep at least the newest snapshot" in zero.stderr

    async def put_malformed() -> None:
        reg = EtcdRegistry([env.etcd.endpoint], env.project)
        try:
            key = f"/featurestore/{env.project}/canary/ranker".encode()
            await reg._link.call(reg._link.client.put, key, b'{"candidate_version": 5, "share": 0.1}')
        finally:
            await reg.close()

    asyncio.run(put_malformed())
    status = env.cli("canary", "status")
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert "ranker: MALFORMED: canary record of feature service 'ranker' is malformed" in status.stdout
    promote = env.cli("canary", "promote", "ranker")
    assert promote.returncode == 2 and "'base_version' is missing" in promote.stderr
    abort = env.cli("canary", "abort", "ranker")
    assert abort.returncode == 0 and "malformed canary record of ranker is deleted" in abort.stdout
    assert "no canaries" in env.cli("canary", "status").stdout


@pytest.fixture
def served(env: Env) -> Iterator[tuple[Env, ServerProcess]]:
    assert env.cli("apply", str(env.defs("base"))).returncode == 0
    server = ServerProcess(["--config", str(env.config)], log_path=env.tmp / "server.log").start()
    yield env, server
    server.stop()


def test_hot_swap_under_continuous_load(served: tuple[Env, ServerProcess]) -> None:
    """Apply changes while joins run: every response is consistent with exactly one
    registry version, none fails, and every version applied is eventually served."""
    env, server = served
    bodies = [{"entities": {"user_id": [1, 2, 3]}, "feature_service": "ranker"}]
    seen: list[tuple[int, int, list[str]]] = []
    errors: list[Any] = []

    def traffic() -> None:
        status, doc = server.join(bodies[0])
        if status != 200:
            errors.append(doc)
            return
        seen.append(
            (doc["metadata"]["registry_version"], len(doc["results"]), doc["metadata"]["feature_names"])
        )

    versions = [
        env.defs("a", activity=True, service_extra=", user_activity:ctr_30d"),
        env.defs("b", activity=True, service_extra=", user_profile:country"),
        env.defs("c", activity=True, service_extra=", user_profile:country, user_activity:ctr_30d"),
        env.defs("d", activity=True),
    ]

    def served_on(version: int) -> Callable[[], bool]:
        return lambda: sum(1 for v, _, _ in seen if v == version) >= 10  # joins on that version

    with Background(traffic, threads=4):
        wait_until(served_on(1), 10, "joins on version 1")
        for version, f in enumerate(versions, start=2):
            assert env.cli("apply", str(f)).returncode == 0
            wait_until(served_on(version), 10, f"joins on version {version}")
    assert not errors
    expected = {1: ["user_id", "age"], 2: ["user_id", "age", "ctr_30d"], 3: ["user_id", "age", "country"],
                4: ["user_id", "age", "country", "ctr_30d"], 5: ["user_id", "age"]}  # fmt: skip
    for version, n_results, names in seen:
        assert names == expected[version] and n_results == len(names), (version, names)
    assert {v for v, _, _ in seen} == {1, 2, 3, 4, 5}


def test_canary_split_is_stable_and_measured(served: tuple[Env, ServerProcess]) -> None:
    env, server = served
    cand = env.defs("cand", activity=True, service_extra=", user_activity:ctr_30d")
    assert env.cli("canary", "start", "ranker", "--file", str(cand), "--share", "0.3").returncode == 0
    wait_until(
        lambda: any(
            server.join({"entities": {"user_id": [u]}, "feature_service": "ranker"})[1]["metadata"][
                "registry_version"
            ]
            == 2
            for u in range(1, 40)
        ),
        10,
        "the canary to reach the server",
    )
    by_user: dict[int, set[int]] = {}
    for _ in range(2):
        for u in range(1, 201):
            _, doc = server.join({"entities": {"user_id": [u]}, "feature_service": "ranker"})
            by_user.setdefault(u, set()).add(doc["metadata"]["registry_version"])
    assert all(len(v) == 1 for v in by_user.values())  # an entity stays on one side
    on_candidate = sum(1 for v in by_user.values() if v == {2})
    assert 30 <= on_candidate <= 90, on_candidate  # ~30% of 200
    text = http_get(server.url + "/metrics")[1].decode()
    assert re.search(
        r'featurestore_service_requests_total\{registry_version="2",service="ranker"\} \d+', text
    )
    assert re.search(
        r'featurestore_service_requests_total\{registry_version="1",service="ranker"\} \d+', text
    )
    assert env.cli("canary", "abort", "ranker").returncode == 0
    wait_until(
        lambda: all(
            server.join({"entities": {"user_id": [u]}, "feature_service": "ranker"})[1]["metadata"][
                "registry_version"
            ]
            == 1
            for u in range(1, 30)
        ),
        5,
        "canary gone",
    )


def test_etcd_outage_keeps_serving_and_resumes(served: tuple[Env, ServerProcess]) -> None:
    env, server = served
    body = {"entities": {"user_id": [1]}, "feature_service": "ranker"}
    statuses: list[int] = []

    def traffic() -> None:
        statuses.append(server.join(body)[0])

    with Background(traffic):
        env.etcd.stop()

        def stale() -> bool:
            doc = json.loads(http_get(server.url + "/readyz")[1])
            return doc["registry"]["connected"] is False and doc["registry"]["seconds_since_contact"] > 1

        wait_until(stale, 15, "readyz to report a stale registry")
        assert http_get(server.url + "/readyz")[0] == 200  # still serving the last snapshot

        def metrics_say_stale() -> bool:  # the gauges refresh once a second
            text = http_get(server.url + "/metrics")[1].decode()
            m = re.search(r"^featurestore_registry_staleness_seconds (\S+)$", text, re.M)
            return "featurestore_registry_connected 0.0" in text and m is not None and float(m.group(1)) >= 1

        wait_until(metrics_say_stale, 5, "metrics to report a stale registry")
        n = len(statuses)
        wait_until(lambda: len(statuses) > n + 20, 10, "traffic during the outage")
        env.etcd.restart()
        # changes made right after etcd returns must reach the server (watch resumes
        # from the last revision it saw)
        for f in (
            env.defs("r1", activity=True),
            env.defs("r2", activity=True, service_extra=", user_activity:ctr_30d"),
        ):
            assert env.cli("apply", str(f)).returncode == 0
        wait_until(
            lambda: server.join(body)[1]["metadata"]["registry_version"] == 3,
            15,
            "version 3 after the outage",
        )
        wait_until(
            lambda: json.loads(http_get(server.url + "/readyz")[1])["registry"]["connected"] is True,
            10,
            "reconnected",
        )
    assert set(statuses) == {200}
    assert server.join(body)[1]["metadata"]["feature_names"] == ["user_id", "age", "ctr_30d"]


def test_data_versions_live_in_etcd(env: Env, redis_server: RedisServer) -> None:
    config = env.tmp / "redis.yaml"
    config.write_text(
        f"project: {env.project}\nregistry: {{kind: etcd, endpoints: ['{env.etcd.endpoint}']}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}'}}}}\n"
    )
    assert env.cli("apply", str(env.defs("base"))).returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config), "--view", "user_profile",
         "--source", str(env.users), "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = subprocess.run(
        ["etcdctl", "--endpoints", env.etcd.endpoint, "get", f"/featurestore/{env.project}/data/user_profile/current", "--print-value-only"],
        capture_output=True, text=True, timeout=10, env={"ETCDCTL_API": "3"},
    )  # fmt: skip
    assert got.stdout.strip() == "1"
    server = ServerProcess(["--config", str(config)], log_path=env.tmp / "s.log").start()
    try:
        _, doc = server.join({"entities": {"user_id": [1]}, "features": ["user_profile:age"]})
        assert doc["results"][1]["values"] == [72]
    finally:
        server.stop()


def test_a_change_that_fails_to_apply_is_retried_without_another_change(
    served: tuple[Env, ServerProcess],
) -> None:
    """A published snapshot the server cannot serve yet (its new view's data is not
    there) keeps the old version serving, says so, and is served as soon as it can
    be, with no further publication to wake the server up."""
    env, server = served
    body = {"entities": {"user_id": [1]}, "feature_service": "ranker"}
    late = env.tmp / "late.parquet"
    defs = env.defs("late", activity=True, service_extra=", user_activity:ctr_30d")
    activity = ACTIVITY.format(users=env.users)
    defs.write_text(defs.read_text().replace(activity, activity.replace(str(env.users), str(late))))
    assert str(late) in defs.read_text()
    assert env.cli("apply", str(defs)).returncode == 0

    def pending() -> bool:
        doc = json.loads(http_get(server.url + "/readyz")[1])
        return any("registry change not applied" in d for d in doc["degraded"])

    wait_until(pending, 10, "readyz to report the change it cannot apply")
    text = http_get(server.url + "/metrics")[1].decode()
    assert "featurestore_registry_apply_pending 1.0" in text
    assert re.search(r"^featurestore_registry_apply_failures_total [1-9]", text, re.M)
    status, doc = server.join(body)
    assert status == 200 and doc["metadata"]["registry_version"] == 1

    late.write_bytes(env.users.read_bytes())
    wait_until(
        lambda: server.join(body)[1]["metadata"]["registry_version"] == 2,
        15,
        "version 2 once its data exists",
    )
    assert server.join(body)[1]["metadata"]["feature_names"] == ["user_id", "age", "ctr_30d"]
    doc = json.loads(http_get(server.url + "/readyz")[1])
    assert doc["status"] == "ok" and doc["degraded"] == []


def test_a_malformed_pointer_in_etcd_leaves_a_running_server_applying_every_other_change(
    served: tuple[Env, ServerProcess],
) -> None:
    """One data pointer put by hand as 'abc' stopped the server applying any registry
    change, with a traceback at every retry; the CLI crashed on a malformed current."""
    env, server = served
    root = f"/featurestore/{env.project}"
    etcdctl = ["etcdctl", "--endpoints", env.etcd.endpoint]
    put = [*etcdctl, "put", f"{root}/data/user_profile/current", "abc"]
    assert subprocess.run(put, capture_output=True, timeout=10, env={"ETCDCTL_API": "3"}).returncode == 0

    def degraded() -> list[str]:
        return list(json.loads(http_get(server.url + "/readyz")[1])["degraded"])

    wait_until(lambda: any("'abc'" in d for d in degraded()), 10, "readyz to report the pointer")
    assert any(
        f"registry pointer {root}/data/user_profile/current is malformed: 'abc'" in d for d in degraded()
    )
    two = env.defs("two", activity=True)  # a change unrelated to the view's data
    assert env.cli("apply", str(two)).returncode == 0
    body = {"entities": {"user_id": [1]}, "feature_service": "ranker"}
    wait_until(lambda: server.join(body)[1]["metadata"]["registry_version"] == 2, 15, "version 2 served")
    assert "Traceback" not in (env.tmp / "server.log").read_text()

    put = [*etcdctl, "put", f"{root}/registry/current", "x1"]
    assert subprocess.run(put, capture_output=True, timeout=10, env={"ETCDCTL_API": "3"}).returncode == 0
    out = env.cli("registry", "history")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(
        f"error: FAILED_PRECONDITION: registry pointer {root}/registry/current is malformed: 'x1' is no version number; "
    )


async def test_a_servers_state_reads_the_data_versions_and_watermarks_in_one_etcd_range(
    etcd_server: EtcdServer,
) -> None:
    """``load_state`` read ``data/`` twice (data versions, then watermarks: a carry-over
    since s56), so a watermark could be newer than the data version served with it."""
    from featurestore.registry.base import Watermark, load_state

    reg = EtcdRegistry([etcd_server.endpoint], f"p{uuid.uuid4().hex[:8]}")
    ranges: list[bytes] = []
    call = reg._link.call

    async def counted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "get_prefix":
            ranges.append(args[0])
        return await call(fn, *args, **kwargs)

    reg._link.call = counted  # type: ignore[method-assign]
    try:
        await reg.swap_data_version("v", expected=0, new=2)
        await reg.set_watermark("v", Watermark(2, 1_700_000_000_000_000), expected=None)
        ranges.clear()
        state = await load_state(reg)
        assert state.data_versions == {"v": 2} and state.watermarks == {
            "v": Watermark(2, 1_700_000_000_000_000)
        }
        assert [r for r in ranges if r.endswith(b"/data/")] == [reg._data]
    finally:
        await reg.close()
