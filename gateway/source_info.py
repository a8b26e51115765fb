"""Proto comments by element full name, from a FileDescriptorSet built with --include_source_info.

Generated `_pb2` modules drop SourceCodeInfo, so the OpenAPI document reads comments from the
descriptor set `make gen` writes beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

# Field numbers in descriptor.proto that make up SourceCodeInfo location paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


class Comments:
    """Leading (else trailing) comments of messages, fields, enums, values, services and methods."""

    def __init__(self, by_name: dict[str, str] | None = None) -> None:
        self._by_name = by_name or {}

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, full_name: str) -> str:
        """The comment of an element (e.g. "aibattle.v1.Model.id"), or ""."""
        return self._by_name.get(full_name, "")

    @classmethod
    def load(cls, path: Path | None) -> Comments:
        """Read a descriptor set; a missing or unreadable file gives no comments rather than no gateway."""
        if path is None:
            return cls()
        try:
            data = path.read_bytes()
            files = descriptor_pb2.FileDescriptorSet.FromString(data).file
        except (OSError, ValueError):
            return cls()
        return cls.from_files(files)

    @classmethod
    def from_files(cls, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> Comments:
        by_name: dict[str, str] = {}
        for file in files:
            text = {tuple(loc.path): _text(loc) for loc in file.source_code_info.location}
            prefix = f"{file.package}." if file.package else ""

            def put(name: str, path: tuple[int, ...], text: dict[tuple[int, ...], str] = text) -> None:
                if comment := text.get(path):
                    by_name[name] = comment

            def walk_message(
                message: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]
            ) -> None:
                name = f"{scope}{message.name}"
                put(name, path)
                for i, fld in enumerate(message.field):
                    put(f"{name}.{fld.name}", (*path, _MESSAGE_FIELD, i))
                for i, nested in enumerate(message.nested_type):
                    walk_message(nested, f"{name}.", (*path, _MESSAGE_NESTED, i))
                for i, enum in enumerate(message.enum_type):
                    walk_enum(enum, f"{name}.", (*path, _MESSAGE_ENUM, i))

            def walk_enum(
                enum: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]
            ) -> None:
                put(f"{scope}{enum.name}", path)
                for i, value in enumerate(enum.value):
                    # Enum values are scoped beside their enum, but keep them apart per enum.
                    put(f"{scope}{enum.name}.{value.name}", (*path, _ENUM_VALUE, i))

            for i, message in enumerate(file.message_type):
                walk_message(message, prefix, (_FILE_MESSAGE, i))
            for i, enum in enumerate(file.enum_type):
                walk_enum(enum, prefix, (_FILE_ENUM, i))
            for i, service in enumerate(file.service):
                put(f"{prefix}{service.name}", (_FILE_SERVICE, i))
                for j, method in enumerate(service.method):
                    put(f"{prefix}{service.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j))
        return cls(by_name)


def _text(location: descriptor_pb2.SourceCodeInfo.Location) -> str:
    raw = location.leading_comments or location.trailing_comments
    lines = [line[1:] if line.startswith(" ") else line for line in raw.strip("\n").split("\n")]
    return "\n".join(lines).strip()
