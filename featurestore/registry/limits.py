"""How large a request the etcd registry may send, and etcd's refusals of one.

etcd refuses a request over its ``--max-request-bytes`` (1.5 MiB by default) with
INVALID_ARGUMENT "etcdserver: request is too large". A snapshot is written in one
transaction, so its encoded size is checked before: the operator is told the size and
the limit instead of a refusal that looked like a lost connection (retried, and the
registry reported disconnected).
"""

from __future__ import annotations

import grpc
from aetcd import exceptions as etcd_errors

from featurestore.errors import FeatureStoreError, LimitExceeded

ETCD_MAX_REQUEST_BYTES = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
_TRANSACTION_OVERHEAD = 4096  # the keys, compares and framing of a publish transaction


def check_snapshot_size(raw: bytes, version: int, limit: int) -> None:
    if len(raw) + _TRANSACTION_OVERHEAD > limit:
        raise LimitExceeded(
            f"registry snapshot {version} is {_mib(len(raw))} encoded, over the etcd registry's "
            f"request limit of {_mib(limit)} (registry.max_request_bytes, matching etcd's "
            "--max-request-bytes): split the definitions across projects, or raise both limits",
            details=[{"snapshot_bytes": len(raw), "limit_bytes": limit}],
        )


def refusal(error: BaseException, limit: int) -> FeatureStoreError | None:
    """What etcd answered when it refused a request itself (not a lost connection: no
    retry helps), or None for any other error."""
    # (etcd says INVALID_ARGUMENT for a wrong password too: that stays a failure to connect)
    if isinstance(error, etcd_errors.InvalidArgumentError) and "too large" in str(error):
        return LimitExceeded(
            f"etcd refused the request as too large ({error}); the registry's limit is "
            f"{_mib(limit)} (registry.max_request_bytes): etcd's --max-request-bytes is lower"
        )
    if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return LimitExceeded(f"etcd refused the request as too large: {error.details()}")
    return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB ({n} bytes)"
