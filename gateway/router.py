"""Request → route: path template matching with 404 / 405 / 426 answers, most specific route first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import (
    METHOD_NOT_ALLOWED,
    ROUTE_NOT_FOUND,
    WEBSOCKET_UPGRADE_REQUIRED,
    ApiError,
    FailedPrecondition,
)
from gateway.routes import Kind, Route


@dataclass(frozen=True)
class Match:
    """A route and the values of its path variables (dotted field path → decoded string)."""

    route: Route
    path_params: dict[str, str]


class Router:
    """Matches (method, raw path, upgrade?) against derived routes.

    A path that a template without variables spells out (`/api/v1/completions`, `…/completions:stream`)
    is found in a dict, its answer computed at start-up by the same scan; any other path is matched
    against every template, most specific first.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._literal: dict[str, list[tuple[Route, dict[str, str]]]] = {}
        for route in self.routes:
            if not route.template.variables and not any(s in ("*", "**") for s in route.template.segments):
                path = route.template.example()
                self._literal[path] = self._scan(path)

    def _scan(self, raw_path: str) -> list[tuple[Route, dict[str, str]]]:
        return _most_specific([(r, p) for r in self.routes if (p := r.template.match(raw_path)) is not None])

    def match(self, method: str, raw_path: str, *, websocket: bool) -> Match:
        """The route for a request; raises ApiError for 404, 405 (with Allow) and 426.

        A path names one resource, that of its most specific matching templates: `.../c1:cancel` is the
        `{id}:cancel` resource (POST), not an id "c1:cancel" for the `{id}` routes, so the methods
        served, the 405's Allow and the OpenAPI document agree. (An id ending in a declared verb is
        out of reach; grpc-gateway would fall back to it.) An upgrade request prefers a WebSocket
        route; without one it is served as plain HTTP.
        """
        matches = self._literal.get(raw_path)
        if matches is None:
            matches = self._scan(raw_path)
        if websocket and method == "GET":
            for route, params in matches:
                if route.kind is Kind.WEBSOCKET:
                    return Match(route, dict(params))
        for route, params in matches:
            if route.kind is Kind.REST and route.http_method == method:
                return Match(route, dict(params))
        if not matches:
            raise route_not_found(f"{method} {raw_path}")
        if method == "GET" and any(r.kind is Kind.WEBSOCKET for r, _ in matches):
            raise FailedPrecondition(
                WEBSOCKET_UPGRADE_REQUIRED,
                f"{raw_path} is a WebSocket endpoint: connect with an Upgrade: websocket request",
                headers={"Upgrade": "websocket"},
            )
        raise method_not_allowed(method, raw_path, sorted({r.http_method for r, _ in matches}))

    def allowed_methods(self, raw_path: str) -> list[str]:
        """The methods of the resource this path names (for CORS preflight). WebSocket routes are GET."""
        matches = self._literal.get(raw_path)
        if matches is None:
            matches = self._scan(raw_path)
        return sorted({r.http_method for r, _ in matches})


def _most_specific(matches: list[tuple[Route, dict[str, str]]]) -> list[tuple[Route, dict[str, str]]]:
    """The matches whose template is as specific as the best one (see PathTemplate.specificity)."""
    if not matches:
        return matches
    best = min(r.template.specificity() for r, _ in matches)
    return [(r, p) for r, p in matches if r.template.specificity() == best]


def method_not_allowed(method: str, raw_path: str, allowed: Sequence[str]) -> ApiError:
    """The 405 for a path served with other methods (derived routes and the gateway's own endpoints)."""
    allow = ", ".join(allowed)
    return METHOD_NOT_ALLOWED.error(
        f"method {method} not allowed on {raw_path}; allowed: {allow}", headers={"Allow": allow}
    )


def route_not_found(what: str) -> ApiError:
    """The 404 for a path no route serves (REST, WebSocket or CORS preflight)."""
    return ROUTE_NOT_FOUND.error(f"no route for {what}")
