"""Field bounds declared in the protos with `(aibattle.v1.bounds)`: read once, enforced and documented.

A bound says what range a number may take, or how many elements a repeated field may hold. The
schema states it once; the server refuses a request outside it (`check`, run on every request by
the server's BoundsInterceptor) and the OpenAPI document publishes it (`json_schema_keywords`), so
the limit a client reads is the limit the server applies.

A `google.protobuf.Timestamp` anywhere in a request is checked too: its own spec bounds it (years 1 to
9999, nanos 0 to 999,999,999), and protobuf's conversions fail on one outside them.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from aibattle.v1 import options_pb2
from common.errors import InvalidArgument


class Bounds(NamedTuple):
    """Inclusive limits; None means unbounded on that side."""

    min: int | None
    max: int | None

    def describe(self, counted: str | None = None) -> str:
        """'must be 0 to 50', 'must be at least 1', or with counted='items': 'must have 2 to 8 items'."""
        verb = "must have" if counted else "must be"
        noun = f" {counted}" if counted else ""
        if self.min is not None and self.max is not None:
            return f"{verb} {self.min} to {self.max}{noun}"
        if self.min is not None:
            return f"{verb} at least {self.min}{noun}"
        return f"{verb} at most {self.max}{noun}"

    def admits(self, value: int | float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


def bounds_of(field: FieldDescriptor) -> Bounds | None:
    """The field's declared bounds, or None."""
    options = field.GetOptions()
    if not options.HasExtension(options_pb2.bounds):
        return None
    declared = options.Extensions[options_pb2.bounds]
    return Bounds(
        declared.min if declared.HasField("min") else None,
        declared.max if declared.HasField("max") else None,
    )


TIMESTAMP = "google.protobuf.Timestamp"
_SECONDS = Bounds(-62_135_596_800, 253_402_300_799)  # 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z
_NANOS = Bounds(0, 999_999_999)


@functools.cache
def _plan(descriptor: Descriptor) -> tuple[tuple[FieldDescriptor, Bounds | None, bool], ...]:
    """Per message type: the fields worth visiting (bounded, or messages that may hold bounded ones)."""
    plan = []
    for field in descriptor.fields:
        bounds = bounds_of(field)
        sub = field.message_type
        nested = sub is not None and not sub.GetOptions().map_entry and _may_hold_bounds(sub, frozenset())
        if bounds is not None or nested:
            plan.append((field, bounds, nested))
    return tuple(plan)


def _may_hold_bounds(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if descriptor.full_name == TIMESTAMP:
        return True
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    return any(
        bounds_of(f) is not None or (f.message_type is not None and _may_hold_bounds(f.message_type, seen))
        for f in descriptor.fields
    )


def _check_timestamp(message: Message, path: str) -> None:
    seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
    if not (_SECONDS.admits(seconds) and _NANOS.admits(nanos)):
        raise InvalidArgument(
            path.rstrip("."),
            f"is not a valid timestamp (seconds {seconds}, nanos {nanos}): years 1 to 9999,"
            " nanos 0 to 999999999",
        )


def check(message: Message, prefix: str = "") -> None:
    """Raise InvalidArgument naming the first field outside its declared bounds (paths like models[2].x)."""
    if message.DESCRIPTOR.full_name == TIMESTAMP:
        _check_timestamp(message, prefix)
        return
    for field, bounds, nested in _plan(message.DESCRIPTOR):
        path = f"{prefix}{field.name}"
        value: Any = getattr(message, field.name)
        if bounds is not None:
            if field.is_repeated:
                if not bounds.admits(len(value)):
                    raise InvalidArgument(path, f"{bounds.describe('items')}, got {len(value)}")
            elif (not field.has_presence or message.HasField(field.name)) and not bounds.admits(value):
                raise InvalidArgument(path, f"{bounds.describe()}, got {value}")
        if nested:
            if field.is_repeated:
                for i, item in enumerate(value):
                    check(item, f"{path}[{i}].")
            elif message.HasField(field.name):
                check(value, f"{path}.")


def json_schema_keywords(field: FieldDescriptor) -> dict[str, int]:
    """The bounds as JSON Schema: minimum/maximum on a number, minItems/maxItems on a repeated field."""
    bounds = bounds_of(field)
    if bounds is None:
        return {}
    low, high = ("minItems", "maxItems") if field.is_repeated else ("minimum", "maximum")
    keywords = {}
    if bounds.min is not None:
        keywords[low] = bounds.min
    if bounds.max is not None:
        keywords[high] = bounds.max
    return keywords
