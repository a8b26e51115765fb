"""The gateway's options: one pydantic model is the `[gateway]` TOML table, the CLI's flags and what runs.

`GatewaySettings` holds every knob, each documented once by its attribute docstring; `GatewayOptions`
adds what is not configuration (the API to serve). The plumbing every configuration table shares is
`common.config`; the server's configuration embeds the gateway's table.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

from google.protobuf.descriptor import FileDescriptor
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    NonNegativeFloat,
    PositiveInt,
    PrivateAttr,
    StrictStr,
    StringConstraints,
)

from common.api import API_PACKAGE, api_files
from common.config import LAX, ConfigModel, Strings, address_or_empty, config_error
from gateway.metadata import HeaderMatcher, header_matcher, owned_by_grpc

DESCRIPTOR_SET_NAME = "aibattle_descriptors.binpb"


def default_api_files() -> tuple[FileDescriptor, ...]:
    """Every generated `aibattle.v1` module that declares a service: a new proto file needs no edit here."""
    return api_files()


def default_descriptor_set() -> Path | None:
    """`aibattle/aibattle_descriptors.binpb` (written by `make gen` into gen/, with source comments; package
    data in the wheel), if present."""
    # `aibattle` is a namespace package: its __path__ may list several directories (gen/, an editable
    # install's mapping, a path-hook placeholder), so take the first that holds the file.
    package = importlib.import_module(API_PACKAGE.partition(".")[0])
    for directory in package.__path__:
        candidate = Path(directory) / DESCRIPTOR_SET_NAME
        if candidate.is_file():
            return candidate
    return None


def _forwardable(name: str) -> str:
    if owned_by_grpc(name):
        raise config_error("header", f"{name!r} is owned by the gRPC runtime and is never forwarded")
    return name


HeaderName = Annotated[
    StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]+$"), AfterValidator(_forwardable)
]


def _empty_is_none(value: object) -> object:
    # TOML has no null, and a CLI flag only strings: "" is how both say "none".
    return None if value == "" else value


class GatewaySettings(ConfigModel):
    """The gateway's knobs: the `[gateway]` TOML table, and the flags of `python -m gateway`."""

    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    """Largest request body (and WebSocket message, and NDJSON request line); larger ones get 413 (1009)."""

    cors_origins: Strings = ()
    """Origins allowed by CORS, e.g. ["http://localhost:3000"]; "*" allows any. Empty: no CORS headers."""

    strict: bool = True
    """Unknown body fields and query parameters are a 400 naming them; false ignores them."""

    emit_unpopulated: bool = True
    """Print fields at their default value (0, "", false, []) in responses, so every field is always there."""

    compat_endpoints: bool = True
    """Serve the OpenAI (/v1/...) and Ollama (/api/tags, /api/chat, /api/generate) endpoints, when the API
    includes aibattle.v1's CompletionService."""

    forward_headers: Annotated[tuple[HeaderName, ...], LAX] = ()
    """HTTP headers forwarded as gRPC metadata (lower-cased) beyond the defaults: Authorization, X-API-Key,
    X-Request-Id, and Grpc-Metadata-<key> as <key>."""

    # aiohttp's "off" is None (TOML has no null); 0 would ping in a busy loop.
    ws_heartbeat: Annotated[NonNegativeFloat | None, AfterValidator(lambda s: s or None)] = 30.0
    """Seconds between WebSocket pings; a peer that stops answering is dropped (and its call cancelled).
    0 turns pings off."""

    ws_idle_timeout: NonNegativeFloat = 600.0
    """Seconds a WebSocket may pass without a message either way (pings do not count) before the gateway
    closes it: a final DEADLINE_EXCEEDED error frame, close code 4004. 0 never closes an idle one."""

    ws_auth_timeout: NonNegativeFloat = 5.0
    """Seconds a flat-dialect WebSocket without credentials gets to send its auth frame once the server
    refused its call for want of them (UNAUTHENTICATED); then the error frame and close code 4016."""

    sse_keepalive_seconds: NonNegativeFloat = 15.0
    """Seconds of silence after which a Server-Sent Events stream sends a `: keep-alive` comment (so
    proxies and browsers keep an idle follower's connection); 0 turns them off."""

    shutdown_timeout: NonNegativeFloat = 5.0
    """Seconds in-flight HTTP requests get to finish when the gateway closes."""

    title: StrictStr = "AI Battle API"
    """OpenAPI info.title."""

    version: StrictStr = "v1"
    """OpenAPI info.version."""

    descriptor_set: Annotated[Annotated[FilePath, LAX] | None, BeforeValidator(_empty_is_none)] = Field(
        default_factory=default_descriptor_set
    )
    """FileDescriptorSet with source info (relative to the working directory): proto comments become OpenAPI
    descriptions. Default: the one `make gen` writes; "" (None): no comments."""


class MetricsSettings(ConfigModel):
    """Prometheus metrics of the standalone gateway (`python -m gateway`): the `[server]` keys of the same
    names, as the server reads them for the in-process gateway, and their flags. (`metrics_key_label` is
    not one: the server counts calls by key, in its own process.)"""

    metrics: bool = True
    """Record Prometheus metrics and serve them (see metrics_addr); false records nothing."""

    metrics_addr: Annotated[str, AfterValidator(address_or_empty)] = ""
    """Empty serves `/metrics` on the gateway's port; a host:port serves it there instead, on a listener of
    its own (and not on the gateway's)."""


class GatewayOptions(GatewaySettings):
    """What the gateway runs with: its settings plus the API to serve.

    A subclass rather than one model with `files` excluded: the TOML table and the CLI are built from
    GatewaySettings, so `files` is an unknown key in a file and never becomes a flag, with no exclusion
    list to keep in step; and every GatewayOptions is a GatewaySettings, so a knob added there reaches
    the gateway, the TOML table and the CLI at once. Descriptors are Python objects, not configuration.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    files: Annotated[tuple[FileDescriptor, ...], LAX] = Field(default_factory=default_api_files)
    """Proto files whose services are served: their HTTP and WebSocket rules become the routes."""

    metrics_route: bool = True
    """Serve `/metrics` on the gateway's port, when metrics are recorded (`common.observability.metrics`).
    Off when they have a listener of their own ([server].metrics_addr, `--metrics-addr`)."""

    _header_matcher: HeaderMatcher = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        # Built once here, not per request.
        self._header_matcher = header_matcher(self.forward_headers)

    @property
    def header_matcher(self) -> HeaderMatcher:
        """Which HTTP headers become gRPC metadata, and under which key (from forward_headers)."""
        return self._header_matcher

    @classmethod
    def from_settings(cls, settings: GatewaySettings, **programmatic: Any) -> GatewayOptions:
        """Options running `settings`, plus programmatic fields such as `files`."""
        return cls(**dict(settings), **programmatic)
