"""An Arrow join answer never holds two columns of one name, and the client's
``to_arrow`` / ``to_pandas(statuses=True)`` never overwrite one column with another, on a
real server (review s56, finding 3): a clash made by the join's names, here an entity
``user`` and, with ``full_feature_names``, view ``user``'s feature ``status``
(``user__status``), is a 400 (definitions do not refuse such names: docs/api.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.client import FeatureClient
from tests.support import CLIENT_DEADLINE_S, ServerProcess, http_post

ARROW = "application/vnd.apache.arrow.stream"
JOIN = {"entities": {"user": [1]}, "features": ["user:status", "user:score"]}


@pytest.fixture(scope="module")
def clashing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("arrow-names")
    pq.write_table(
        pa.table(
            {
                "user": pa.array([1], pa.int64()),
                "event_timestamp": pa.array([1_704_067_200_000_000], pa.timestamp("us", tz="UTC")),
                "status": ["gold"],
                "score": [1.5],
            }
        ),
        work / "users.parquet",
    )
    (work / "features.yaml").write_text(
        "project: names\nentities:\n  - {name: user, dtype: int64}\nfeature_views:\n"
        "  - name: user\n    entities: [user]\n    batch_source: {path: users.parquet}\n"
        "    features:\n      - {name: status, dtype: string}\n      - {name: score, dtype: float64}\n"
    )
    (work / "config.yaml").write_text(
        f"project: names\nregistry: {{path: {work / 'registry'}}}\nstores: {{default: {{kind: memory}}}}\n"
    )
    args = ["--config", str(work / "config.yaml"), "--definitions", str(work / "features.yaml")]
    proc = ServerProcess(args, log_path=work / "server.log").start()
    yield proc
    proc.stop()


def test_an_arrow_answer_whose_names_would_clash_is_a_400_naming_them(clashing: ServerProcess) -> None:
    body = json.dumps({**JOIN, "full_feature_names": True}).encode()
    status, raw, _ = http_post(clashing.url + "/v1/feature/join", body, {"accept": ARROW})
    assert status == 400, raw[:300]  # a 200 with two columns "user__status" before
    error = json.loads(raw)["error"]
    assert error["message"] == (
        "the Arrow answer would have two columns named 'user__status': the statuses of column 'user' "
        "and column 'user__status'; rename one (full_feature_names may), or ask for JSON"
    )
    assert error["details"] == [{"column": "user__status"}]
    # JSON has no such columns, and Arrow without full names none either
    assert http_post(clashing.url + "/v1/feature/join", body)[0] == 200
    status, raw, _ = http_post(
        clashing.url + "/v1/feature/join", json.dumps(JOIN).encode(), {"accept": ARROW}
    )
    assert status == 200
    assert pa.ipc.open_stream(raw).read_all().column_names == [
        "user", "user__status", "user__event_timestamp", "status", "status__status",
        "status__event_timestamp", "score", "score__status", "score__event_timestamp",
    ]  # fmt: skip


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_clients_tables_with_statuses_refuse_a_name_taken_twice_instead_of_overwriting(
    clashing: ServerProcess, transport: str
) -> None:
    where = clashing.url if transport == "http" else f"grpc://{clashing.grpc_target}"
    with FeatureClient(where, deadline=CLIENT_DEADLINE_S) as client:
        result = client.join({"user": [1]}, ["user:status", "user:score"], full_feature_names=True)
    assert result.feature_names == ["user", "user__status", "user__score"]
    # the feature's values overwrote the entity's statuses before, without a word
    with pytest.raises(ValueError, match=r"two columns would be named 'user__status'"):
        result.to_arrow(statuses=True)
    with pytest.raises(ValueError, match=r"two columns would be named 'user__status'"):
        result.to_pandas(statuses=True)
    names = ["user", "user__status", "user__score"]  # without statuses, nothing clashes
    assert result.to_arrow().column_names == names and list(result.to_pandas().columns) == names
    assert result.to_arrow().column("user__status").to_pylist() == ["gold"]
