"""The API as the schema declares it: the generated `aibattle.v1` modules and their services.

The server registers a servicer for each service found here, and the gateway derives its routes from
the same files, so a new proto file or service needs no list edited by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

API_PACKAGE = "aibattle.v1"


def api_files() -> tuple[FileDescriptor, ...]:
    """Every generated `aibattle.v1` module that declares a service, by module name."""
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


def api_services() -> tuple[ServiceDescriptor, ...]:
    """Every service of the API, in the order of `api_files`, then of declaration."""
    return tuple(service for file in api_files() for service in file.services_by_name.values())


def grpc_module(service: ServiceDescriptor) -> ModuleType:
    """The generated `_pb2_grpc` module of a service (its servicer base and `add_…_to_server`)."""
    stem = service.file.name.rpartition("/")[2].removesuffix(".proto")
    return importlib.import_module(f"{API_PACKAGE}.{stem}_pb2_grpc")
