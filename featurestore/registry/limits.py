"""How large a request the etcd registry may send, and etcd's refusals of one.

etcd refuses a request over its ``--max-request-bytes`` (1.5 MiB by default) with
INVALID_ARGUMENT "etcdserver: request is too large". A snapshot is written in one
transaction, so its encoded size is checked before: the operator is told the size and
the limit instead of a refusal that looked like a lost connection (retried, and the
registry reported disconnected). etcd refusing writes because its database is full
(NOSPACE) is RESOURCE_EXHAUSTED as well, saying how to free space.
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
    """What etcd answered when it refused a request for its size, or a write because its
    database is full (not a lost connection: no retry helps), or None for any other error."""
    # (etcd says INVALID_ARGUMENT for a wrong password too: etcd_client.auth_refusal's)
    if isinstance(error, etcd_errors.InvalidArgumentError) and "too large" in str(error):
        return LimitExceeded(
            f"etcd refused the request as too large ({error}); the registry's limit is "
            f"{_mib(limit)} (registry.max_request_bytes): etcd's --max-request-bytes is lower"
        )
    if rpc_code(error) is grpc.StatusCode.RESOURCE_EXHAUSTED:
        details = rpc_details(error)
        if "database space exceeded" in details:
            return LimitExceeded(f"etcd refused the write ({details}): {NO_SPACE}")
        if "larger than max" in details:  # gRPC's own limit of a message
            return LimitExceeded(f"etcd refused the request as too large: {details}")
    # (etcd's "too many requests" is RESOURCE_EXHAUSTED too: a busy etcd, retried)
    return None


# etcd's NOSPACE alarm: its database reached --quota-backend-bytes, and it refuses every
# write of the cluster until space is freed and the alarm disarmed (docs/registry.md,
# "Retention"). aetcd raises ClientError for it, the gRPC error its __cause__.
NO_SPACE = (
    "its database is full (the NOSPACE alarm, --quota-backend-bytes) and every write of the "
    "cluster is refused until space is freed and the alarm disarmed: `featurestore registry "
    "prune --keep N` (if that is refused too, compact and defragment first), compact etcd's "
    "history, defragment each member (`etcdctl defrag`), then `etcdctl alarm disarm` "
    '(docs/registry.md, "Retention")'
)


def rpc_code(error: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of an etcd call's failure: of the ``AioRpcError`` itself, or of
    the one aetcd wrapped (its ``__cause__``); None for anything else."""
    for e in (error, error.__cause__):
        if isinstance(e, grpc.aio.AioRpcError):
            return e.code()
    return None


def rpc_details(error: BaseException) -> str:
    """etcd's message of an etcd call's failure."""
    for e in (error, error.__cause__):
        if isinstance(e, grpc.aio.AioRpcError):
            return e.details() or ""
    return str(error)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB ({n} bytes)"
