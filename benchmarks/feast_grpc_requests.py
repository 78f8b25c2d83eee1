"""Serialized Feast ``GetOnlineFeaturesRequest`` messages for benchmarks/grpc_load.py.

Runs in the Feast peer's gRPC venv (it imports Feast's generated protos and the peer's
``gen_data``, never featurestore), so the load generator can send Feast's own bytes
without either venv importing the other. The keys are drawn exactly as grpc_load draws
ours (``random.Random(seed)``, uniform over 1..100,000), so both servers see the same users.
The file is a sequence of messages, each prefixed by its length (4 bytes, little-endian).

    venv-grpc/bin/python benchmarks/feast_grpc_requests.py --peer-dir ../shared/peers/feast \
        --batch 10 --count 2048 --seed 1000 --out /tmp/feast-b10-s1000.bin
"""

from __future__ import annotations

import argparse
import random
import struct
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--peer-dir", required=True, help="../shared/peers/feast (for gen_data.FEATURE_REFS)")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--count", type=int, default=2048)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sys.path.insert(0, a.peer_dir)
    # the peer's venv and directory only (mypy runs in ours)
    from feast.protos.feast.serving.ServingService_pb2 import (  # type: ignore[import-not-found]
        FeatureList,
        GetOnlineFeaturesRequest,
    )
    from feast.protos.feast.types.Value_pb2 import RepeatedValue, Value  # type: ignore[import-not-found]
    from gen_data import FEATURE_REFS  # type: ignore[import-not-found]

    rnd = random.Random(a.seed)
    ids = [rnd.randint(1, 100_000) for _ in range(a.batch * a.count)]
    messages = [
        GetOnlineFeaturesRequest(
            features=FeatureList(val=FEATURE_REFS),
            entities={
                "user_id": RepeatedValue(
                    val=[Value(int64_val=u) for u in ids[i * a.batch : (i + 1) * a.batch]]
                )
            },
        ).SerializeToString()
        for i in range(a.count)
    ]
    write_messages(a.out, messages)
    return 0


def write_messages(path: str, messages: list[bytes]) -> None:
    """What benchmarks.grpc_load.load_bodies reads back."""
    with open(path, "wb") as f:
        for msg in messages:
            f.write(struct.pack("<I", len(msg)) + msg)


if __name__ == "__main__":
    sys.exit(main())
