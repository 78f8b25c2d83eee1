"""A server on an IPv6 address (``--host ::1``; ``::`` in a dual-stack pod) serves both
ports: gRPC needs the address in brackets, which it did not get (``:::50051`` failed to
bind)."""

from __future__ import annotations

from pathlib import Path

from featurestore.client import FeatureClient, Status
from tests.support import ServerProcess, http_get


class IPv6Server(ServerProcess):
    @property
    def url(self) -> str:
        return f"http://[::1]:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"[::1]:{self.grpc_port}"


def test_a_server_on_an_ipv6_address_serves_http_and_grpc(test_repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'reg'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    server = IPv6Server(
        ["--config", str(config), "--definitions", str(test_repo), "--host", "::1"], log_path=tmp_path / "log"
    ).start()
    try:
        assert http_get(server.url + "/readyz")[0] == 200
        for address in (server.url, f"grpc://{server.grpc_target}"):
            with FeatureClient(address, deadline=5) as client:
                result = client.join({"user_id": [17]}, ["user_profile:age"])
            assert result["age"].statuses == [Status.PRESENT], address
    finally:
        server.stop()
