"""GatewayOptions: the gateway's policy, in one dataclass with defaults (nothing of it is generated)."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.descriptor import FileDescriptor

from gateway.metadata import HeaderMatcher, default_header_matcher

API_PACKAGE = "aibattle.v1"
DESCRIPTOR_SET_NAME = "aibattle_descriptors.binpb"


def default_api_files() -> tuple[FileDescriptor, ...]:
    """Every generated `aibattle.v1` module that declares a service: a new proto file needs no edit here."""
    package = importlib.import_module(API_PACKAGE)
    files: list[FileDescriptor] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{API_PACKAGE}.{info.name}")
        descriptor: FileDescriptor = module.DESCRIPTOR
        if descriptor.services_by_name:
            files.append(descriptor)
    return tuple(files)


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


@dataclass(frozen=True, kw_only=True)
class GatewayOptions:
    """How the gateway behaves. Every field has a safe default."""

    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body (and WebSocket message, and NDJSON request line); larger ones get 413 (1009)."""

    cors_origins: tuple[str, ...] = ()
    """Origins allowed by CORS, e.g. ("http://localhost:3000",); "*" allows any. Empty: no CORS headers."""

    strict: bool = True
    """Unknown body fields and query parameters are a 400 naming them; False ignores them."""

    files: tuple[FileDescriptor, ...] = field(default_factory=default_api_files)
    """Proto files whose services are served: their HTTP and WebSocket rules become the routes."""

    descriptor_set: Path | None = field(default_factory=default_descriptor_set)
    """FileDescriptorSet with source info: proto comments become OpenAPI descriptions. None: no comments."""

    emit_unpopulated: bool = True
    """Print fields at their default value (0, "", false, []) in responses, so every field is always there."""

    header_matcher: HeaderMatcher = default_header_matcher
    """Which HTTP headers become gRPC metadata, and under which key."""

    compat_endpoints: bool = True
    """Serve the OpenAI (/v1/…) and Ollama (/api/tags, /api/chat, /api/generate) endpoints, when the API
    includes aibattle.v1's CompletionService."""

    ws_heartbeat: float | None = 30.0
    """Seconds between WebSocket pings; a peer that stops answering is dropped (and its call cancelled)."""

    shutdown_timeout: float = 5.0
    """Seconds in-flight HTTP requests get to finish when the gateway closes."""

    title: str = "AI Battle API"
    """OpenAPI info.title."""

    version: str = "v1"
    """OpenAPI info.version."""
