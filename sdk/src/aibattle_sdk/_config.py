"""What both clients share: where to connect, how to authenticate, when to retry."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import grpc

from aibattle_sdk.errors import APIError

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "AIBATTLE_TARGET"
API_KEY_ENV = "AIBATTLE_API_KEY"
DEFAULT_TIMEOUT = 60.0
"""Seconds a unary call may take unless its `timeout` says otherwise (a model's answer included)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE, for calls that are safe to repeat.

    Safe: reads (get, list), cancels, completions (nothing is stored), and the resumable event streams.
    Never: creates, add_message, run, delete, Converse, and a completion stream once a chunk arrived.
    Waits grow exponentially with jitter, at least as long as a server's RetryInfo asks, and never past
    the call's deadline.
    """

    max_attempts: int = 4
    """Attempts in all, the first included; 1 disables retries."""
    initial_backoff: float = 0.2
    """Seconds before the first retry."""
    max_backoff: float = 5.0
    """Upper bound of one wait."""
    multiplier: float = 2.0
    """Growth of the wait per attempt."""

    def delay(self, attempt: int, error: APIError) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return max(base * random.uniform(0.5, 1.0), error.retry_after or 0.0)

    def should_retry(self, attempt: int, error: APIError, deadline: float | None) -> float | None:
        """The wait before retrying after `error` on attempt `attempt`, or None to give up."""
        if error.code != grpc.StatusCode.UNAVAILABLE or attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt, error)
        if deadline is not None and time.monotonic() + wait >= deadline:
            return None
        return wait


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ClientConfig:
    """Resolved client options (see `Client` for each one's meaning)."""

    target: str
    api_key: str | None
    credentials: grpc.ChannelCredentials | None
    timeout: float | None
    retry: RetryPolicy
    options: tuple[tuple[str, int | str], ...]

    @classmethod
    def resolve(
        cls,
        target: str | None,
        *,
        api_key: str | None,
        tls: bool | grpc.ChannelCredentials,
        timeout: float | None,
        retry: RetryPolicy | None,
        channel_options: dict[str, int | str] | None,
    ) -> ClientConfig:
        credentials: grpc.ChannelCredentials | None
        if tls is True:
            credentials = grpc.ssl_channel_credentials()
        elif tls is False:
            credentials = None
        else:
            credentials = tls
        return cls(
            target=target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
            api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
            credentials=credentials,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            options=tuple((channel_options or {}).items()),
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the API key as a bearer token (never logged, never in an error)."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def deadline(self, timeout: float | None, *, default: bool = True) -> float | None:
        """The absolute (monotonic) deadline of a call: its own timeout, else the client's if default."""
        seconds = timeout if timeout is not None else (self.timeout if default else None)
        return None if seconds is None else time.monotonic() + seconds


def is_url(target: str) -> bool:
    """Whether a target names an HTTP gateway (a URL) rather than a gRPC server (host:port)."""
    return target.lower().startswith(("http://", "https://"))


def remaining(deadline: float | None) -> float | None:
    """Seconds left until deadline, for grpc's `timeout` (never negative)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
