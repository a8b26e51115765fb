"""The Grafana dashboard's PromQL, read for the tests: every expression, with its variables resolved."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "aibattle-dashboard.json"

# What Grafana substitutes before a query reaches Prometheus, as a fixed stand-in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


class Query(NamedTuple):
    where: str
    """The panel (or variable) it belongs to, for messages."""
    expr: str
    legend: str


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())  # a collapsed row holds its panels


def queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    for panel in panels(dashboard):
        for target in panel.get("targets", ()):
            yield Query(panel["title"], target["expr"], target.get("legendFormat", ""))


def variable_queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield Query(f"${variable['name']}", query["query"] if isinstance(query, dict) else query, "")


def resolved(expr: str) -> str:
    """The expression as Prometheus would get it with every template variable at "All"."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?(job|instance|surface|model)\}?", ".*", expr)
