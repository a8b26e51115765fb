"""AI Battle's Python SDK: typed messages generated from the protos, and clients over gRPC.

    from aibattle_sdk import Client

    with Client() as client:  # $AIBATTLE_TARGET, else 127.0.0.1:50051
        for chunk in client.completions.create(model="smollm2-135m", prompt="Hi", stream=True):
            print(chunk.content, end="", flush=True)

Messages and enums are in `aibattle_sdk.v1`; errors in `aibattle_sdk.errors` (re-exported here).
"""

from importlib import metadata

from aibattle_sdk._config import DEFAULT_TARGET, RetryPolicy
from aibattle_sdk._responses import join_tool_calls
from aibattle_sdk._sync_transport import ConverseSession, Stream
from aibattle_sdk.async_client import AsyncClient, AsyncConverseSession, AsyncStream
from aibattle_sdk.client import Client
from aibattle_sdk.errors import (
    AbortedError,
    AIBattleError,
    AlreadyExistsError,
    APIError,
    AuthenticationError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    RateLimitError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)

try:
    __version__ = metadata.version("aibattle-sdk")
    """The installed distribution's version (sdk/pyproject.toml is the one place it is written)."""
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TARGET",
    "AIBattleError",
    "APIError",
    "AbortedError",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncConverseSession",
    "AsyncStream",
    "AuthenticationError",
    "CancelledError",
    "Client",
    "ConverseSession",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "Stream",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "__version__",
    "join_tool_calls",
]
