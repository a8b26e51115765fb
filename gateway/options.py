"""The gateway's options: one pydantic model is the `[gateway]` TOML table, the CLI's flags and what runs.

`GatewaySettings` holds every knob, each documented once by its attribute docstring; `GatewayOptions`
adds what is not configuration (the API to serve). The plumbing every configuration table shares
(`ConfigModel`, `ConfigError`, `validate`, `read_toml`) lives here too: the gateway runs standalone
and must not import `server`, while the server's configuration embeds the gateway's table.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from google.protobuf.descriptor import FileDescriptor
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    NonNegativeFloat,
    PositiveInt,
    PrivateAttr,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from gateway.metadata import HeaderMatcher, header_matcher, owned_by_grpc

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


class ConfigError(ValueError):
    """A configuration is invalid: one line per problem, each naming where it came from and its key."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


class ConfigModel(BaseModel):
    """A configuration table: immutable, unknown keys refused, strict types (TOML's "1" is not 1, nor 1
    true; an int is a fine float), floats finite, every key documented by its attribute docstring."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


# TOML arrays arrive as lists (tuples keep a frozen config immutable) and paths as strings. Only the
# container or path is lax: items keep their own strict type.
LAX = Field(strict=False)
Strings = Annotated[tuple[StrictStr, ...], LAX]


def config_error(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message already names the bad value (no ", got ..." appended)."""
    return PydanticCustomError(f"config_{kind}", message)


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


M = TypeVar("M", bound=BaseModel)


def validate(
    model: type[M],
    data: object,
    *,
    source: str,
    prefix: tuple[str | int, ...] = (),
    names: Mapping[tuple[str | int, ...], str] | None = None,
    strict: bool | None = None,
) -> M:
    """`model` from `data`, or a ConfigError with one line per problem, as `<source>: <key path>: <why>`.

    `prefix` is where `data` sits in the file; `names` maps a key path to the environment variable or flag
    that set it, so its errors name that instead.
    """
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise ConfigError([_line(error, source, prefix, names or {}) for error in exc.errors()]) from None


def _line(error: ErrorDetails, source: str, prefix: tuple[str | int, ...], names: Mapping[Any, str]) -> str:
    loc = prefix + tuple(error["loc"])
    message = error["msg"]
    if not error["type"].startswith("config_") and error["type"] not in ("missing", "extra_forbidden"):
        shown = repr(error["input"])
        message += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    for length in range(len(loc), 0, -1):
        if loc[:length] in names:
            return f"{names[loc[:length]]}: {message}"
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML file as a dict; any failure to read or parse it is a one-line ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {path}: not UTF-8 ({exc.reason} at byte {exc.start})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: {exc}"]) from None
