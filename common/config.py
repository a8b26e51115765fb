"""The plumbing every configuration table shares (server and gateway): strict pydantic models, and
errors that name where a bad value came from (the file, an environment variable, a flag) and its key.

pydantic v2 reports every problem in one pass with its full key path, has the constraints we need
(ranges, literals, patterns, custom validators) and keeps each key's documentation beside its type
(`use_attribute_docstrings`); see the README's Configuration section for the choice over msgspec.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, ValidatorFunctionWrapHandler
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from common.addresses import AddressError, parse_host_port


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


def address_or_empty(addr: str) -> str:
    """A validator: `addr` is a host:port (IPv6 as [::1]:port), or empty (the listener is off)."""
    if addr:
        try:
            parse_host_port(addr)
        except AddressError as exc:
            raise config_error("address", str(exc)) from None
    return addr


Loc = tuple[str | int, ...]
Problem = tuple[Loc, str, str]
"""A problem a check across keys found: its key path (relative to the table checked), its kind (the
error type becomes config_<kind>) and the message."""


def raise_problems(problems: Sequence[Problem], errors: Sequence[ErrorDetails] = ()) -> None:
    """Raise `errors` (pydantic's, already found) and `problems` as one ValidationError, if there are any.
    Raised inside a validator, its line errors keep their key paths, placed under the value validated."""
    if not problems and not errors:
        return
    details = [
        # The message is already written: kept as it is, under the same error type.
        InitErrorDetails(
            type=PydanticCustomError(error["type"], error["msg"]), loc=error["loc"], input=error["input"]
        )
        for error in errors
    ]
    details += [
        InitErrorDetails(type=config_error(kind, message), loc=loc, input=None)
        for loc, kind, message in problems
    ]
    raise ValidationError.from_exception_data("config", details)


def validate_with(handler: ValidatorFunctionWrapHandler, data: object, problems: Sequence[Problem]) -> Any:
    """`handler(data)` in a wrap validator, its errors and `problems` (checks across keys, made on `data`
    as given) reported together. pydantic runs an after-validator only once every key is valid, so a
    check there would show only after all the other problems were fixed."""
    try:
        value = handler(data)
    except ValidationError as exc:
        raise_problems(problems, exc.errors())
        raise
    raise_problems(problems)
    return value


def given(table: object, key: str) -> bool:
    """Whether a table as given (a TOML mapping, or a model already built) sets `key` itself."""
    if isinstance(table, Mapping):
        return key in table
    return isinstance(table, BaseModel) and key in table.model_fields_set


def value_of(table: object, key: str, default: Any = None) -> Any:
    """A key of a table as given (a TOML mapping, or a model already built), unvalidated; `default` when
    the table does not set it or is no table at all (its own error says so)."""
    if isinstance(table, Mapping):
        return table.get(key, default)
    if isinstance(table, BaseModel):
        return getattr(table, key, default)
    return default


M = TypeVar("M", bound=BaseModel)


def validate(
    model: type[M],
    data: object,
    *,
    source: str,
    prefix: tuple[str | int, ...] = (),
    names: Mapping[tuple[str | int, ...], str] | None = None,
    strict: bool | None = None,
    context: Mapping[str, Any] | None = None,
) -> M:
    """`model` from `data`, or a ConfigError with one line per problem, as `<source>: <key path>: <why>`.

    `prefix` is where `data` sits in the file; `names` maps a key path to the environment variable or flag
    that set it, so its errors name that instead; `context` reaches the validators (pydantic's context).
    """
    try:
        return model.model_validate(data, strict=strict, context=context)
    except ValidationError as exc:
        raise ConfigError([_line(error, source, prefix, names or {}) for error in exc.errors()]) from None


#: Keys whose values are never repeated in an error, even when they have the wrong type.
_SECRET_KEY = re.compile(r"key|secret|token|password", re.IGNORECASE)


def _line(error: ErrorDetails, source: str, prefix: tuple[str | int, ...], names: Mapping[Any, str]) -> str:
    loc = prefix + tuple(error["loc"])
    message = error["msg"]
    secret = any(isinstance(part, str) and _SECRET_KEY.search(part) for part in loc)
    if (
        not secret
        and not error["type"].startswith("config_")
        and error["type"] not in ("missing", "extra_forbidden")
    ):
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
