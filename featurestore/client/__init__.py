"""featurestore's client: joins over HTTP or gRPC with typed results (docs/client.md).

Imports nothing of the server: ``pip install 'featurestore[client]'`` brings httpx and
tenacity; gRPC uses grpcio and protobuf; ``to_arrow``/``to_pandas`` need pyarrow/pandas.

    from featurestore.client import FeatureClient

    with FeatureClient("grpc://127.0.0.1:50051") as client:
        result = client.join({"user_id": [17, 4242]}, ["user_profile:age"])
        result.to_dict()  # {"user_id": [17, 4242], "age": [71, 41]}
"""

from featurestore.client.client import AsyncFeatureClient, FeatureClient
from featurestore.client.errors import (
    AbortedError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FeatureServiceError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from featurestore.client.result import Column, JoinResult, Status

__all__ = [
    "AbortedError",
    "AsyncFeatureClient",
    "CancelledError",
    "Column",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FeatureClient",
    "FeatureServiceError",
    "InternalError",
    "InvalidArgumentError",
    "JoinResult",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Status",
    "UnauthenticatedError",
    "UnavailableError",
]
