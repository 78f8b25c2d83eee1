"""Configuration errors a start meets (review s55): a port clash or an unreadable secret
file set from the environment names the variable, as every other bad value does; every
number that reaches grpc, librdkafka or the OS has a maximum, named when it is passed,
and grpc takes the largest accepted values."""

from __future__ import annotations

import pytest

from featurestore.api.grpc import create_server
from featurestore.config import GrpcConfig, load_config
from featurestore.errors import InvalidArgument

MAX_INTEGER = 2**31 - 1  # a C int: grpc's channel arguments, librdkafka's properties
MAX_SECONDS = MAX_INTEGER / 1000  # grpc's timeouts, in ms


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"FEATURESTORE_GRPC__PORT": "8080"},
         "config: FEATURESTORE_GRPC__PORT (grpc.port): 8080 is also http.port; each listener needs a port of its own"),
        ({"FEATURESTORE_HTTP__ADMIN_PORT": "50051"},
         "config: grpc.port: 50051 is also FEATURESTORE_HTTP__ADMIN_PORT (http.admin_port); each listener needs "
         "a port of its own"),
        ({"FEATURESTORE_HTTP_PORT": "9000", "FEATURESTORE_GRPC__PORT": "9000"},
         "config: FEATURESTORE_GRPC__PORT (grpc.port): 9000 is also FEATURESTORE_HTTP_PORT (http.port); each "
         "listener needs a port of its own"),
        ({"FEATURESTORE_REGISTRY__PASSWORD_FILE": "/nonexistent/secret"},
         "config: FEATURESTORE_REGISTRY__PASSWORD_FILE (registry.password_file): cannot read the secret file: "
         "No such file or directory"),
        ({"FEATURESTORE_STORES__R__KIND": "redis", "FEATURESTORE_STORES__R__PASSWORD_FILE": "/nonexistent/secret"},
         "config: FEATURESTORE_STORES__R__PASSWORD_FILE (stores.r.password_file): cannot read the secret file: "
         "No such file or directory"),
    ],
)  # fmt: skip
def test_a_port_clash_or_a_secret_file_from_the_environment_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], message: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgument) as refused:
        load_config()
    assert refused.value.message == message


GRPC_SECONDS = [f for f in GrpcConfig.__dataclass_fields__ if f.endswith("_seconds")]
GRPC_COUNTS = ["max_ping_strikes", "max_metadata_bytes", "max_concurrent_streams"]


SECONDS = f"{MAX_SECONDS:.3f} seconds (24.8 days)"  # 2^31-1 ms


@pytest.mark.parametrize(
    ("setting", "largest", "too_large", "maximum"),
    [
        *((f"grpc.{name}", "2147483.647", "2147483.648", SECONDS) for name in GRPC_SECONDS),
        *((f"grpc.{name}", str(MAX_INTEGER), str(MAX_INTEGER + 1), "2147483647") for name in GRPC_COUNTS),
        ("limits.max_body_bytes", str(MAX_INTEGER), str(MAX_INTEGER + 1), "2147483647"),
        ("limits.deadline_ms", str(MAX_INTEGER), str(MAX_INTEGER + 1), "2147483647"),
        ("http.backlog", "65535", "65536", "65535"),
        ("http.keep_alive_seconds", "2147483.647", "1e300", SECONDS),
        ("registry.max_request_bytes", str(MAX_INTEGER), str(MAX_INTEGER + 1), "2147483647"),
        ("stream.batch_messages", "1000000", "1000001", "1000000"),
        ("lineage.kafka.session_timeout_ms", "3600000", "3600001", "3600000"),
        ("lineage.kafka.buffer_seconds", "2147483", "2147484", "2147483"),
        ("lineage.kafka.replication_factor", "32767", "32768", "32767"),
    ],
)
def test_a_number_past_its_maximum_is_refused_naming_the_setting_its_variable_and_the_maximum(
    monkeypatch: pytest.MonkeyPatch, setting: str, largest: str, too_large: str, maximum: str
) -> None:
    variable = "FEATURESTORE_" + setting.upper().replace(".", "__")
    monkeypatch.setenv(variable, largest)
    load_config()
    monkeypatch.setenv(variable, too_large)
    with pytest.raises(InvalidArgument) as refused:
        load_config()
    assert refused.value.message.startswith(
        f"config: {variable} ({setting}): expected at most {maximum}, got "
    )


async def test_a_server_built_from_every_grpc_maximum_starts_and_one_past_any_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The maxima are what grpc takes (its C ints), so what crashed the start with an
    OverflowError cannot pass the configuration, and no value grpc takes is refused."""
    maxima = {
        **{f"FEATURESTORE_GRPC__{n.upper()}": "2147483.647" for n in GRPC_SECONDS},
        **{f"FEATURESTORE_GRPC__{n.upper()}": str(MAX_INTEGER) for n in GRPC_COUNTS},
        "FEATURESTORE_LIMITS__MAX_BODY_BYTES": str(MAX_INTEGER),
    }
    for name, value in maxima.items():
        monkeypatch.setenv(name, value)
    config = load_config()
    server = create_server(config.limits.max_body_bytes, config.grpc, reuse_port=False)
    assert server.add_insecure_port("127.0.0.1:0") > 0
    await server.start()
    await server.stop(0)
    monkeypatch.setenv("FEATURESTORE_GRPC__KEEPALIVE_SECONDS", "2147483.648")
    with pytest.raises(InvalidArgument, match="expected at most"):
        load_config()
