"""AI Battle HTTP gateway: REST, SSE, NDJSON and WebSocket routes derived from the protos, with OpenAPI 3.1.

handle = await start_gateway(grpc_target="127.0.0.1:50051", host="127.0.0.1", port=8080)
...
await handle.close()
"""

from __future__ import annotations

from gateway.options import GatewayOptions
from gateway.routes import Route, derive_routes
from gateway.web_app import GatewayHandle, create_app, start_gateway
from gateway.web_metrics import MetricsHandle, start_metrics

__all__ = [
    "GatewayHandle",
    "GatewayOptions",
    "MetricsHandle",
    "Route",
    "create_app",
    "derive_routes",
    "start_gateway",
    "start_metrics",
]
