"""The OpenAPI 3.1 document of the gateway, generated from the same routes it serves.

document: operations, parameters, request and response bodies; schema: JSON Schemas of messages.
"""

from __future__ import annotations

from gateway.openapi.document import build_openapi

__all__ = ["build_openapi"]
