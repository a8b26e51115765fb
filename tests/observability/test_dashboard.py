"""The Grafana dashboard (deploy/grafana/aibattle-dashboard.json) cannot drift from the registry: every
series it queries exists in `metrics.REGISTRY` with the labels it uses, and every series of the registry
has a panel. (tests/observability/test_prometheus.py runs each expression against a real Prometheus.)"""

from __future__ import annotations

import re

from tests.observability import dashboard as dash
from tests.observability.series import SCRAPE_LABELS, registry_series, sample_names

METRIC = re.compile(r"\b(aibattle_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(aibattle_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_REPLACE_TARGET = re.compile(r'label_replace\(.*?,\s*"([a-zA-Z_]\w*)"\s*,', re.S)
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
LABEL_VALUES = re.compile(r"label_values\((.*),\s*([a-zA-Z_]\w*)\)\s*$")


def all_queries() -> list[dash.Query]:
    dashboard = dash.load()
    return [*dash.queries(dashboard), *dash.variable_queries(dashboard)]


def test_the_dashboard_is_importable_json_with_a_prometheus_datasource_variable() -> None:
    dashboard = dash.load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = [p for p in dash.panels(dashboard) if p["type"] != "row"]
    assert len({p["id"] for p in dash.panels(dashboard)}) == len(list(dash.panels(dashboard)))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_series_the_dashboard_queries_is_in_the_registry() -> None:
    known = sample_names()
    unknown = {(q.where, name) for q in all_queries() for name in METRIC.findall(q.expr) if name not in known}
    assert not unknown, f"series not in metrics.REGISTRY (a counter ends in _total): {sorted(unknown)}"


def test_every_label_the_dashboard_uses_is_one_its_series_has() -> None:
    known = sample_names()
    wrong: list[tuple[str, str, str]] = []
    for q in all_queries():
        # A selector's matchers name labels of its own series.
        for name, matchers in SELECTOR.findall(q.expr):
            wrong += [(q.where, name, m) for m in MATCHER.findall(matchers) if m not in known.get(name, ())]
        # Grouping and legends name labels some series of the expression has (or label_replace made).
        available = set().union(*(known.get(n, frozenset()) for n in METRIC.findall(q.expr)))
        available |= set(LABEL_REPLACE_TARGET.findall(q.expr))
        for group in GROUPING.findall(q.expr):
            used = {label.strip() for label in group.split(",") if label.strip()}
            wrong += [(q.where, "by", label) for label in used - available]
        wrong += [(q.where, "legend", label) for label in set(LEGEND.findall(q.legend)) - available]
        if match := LABEL_VALUES.match(q.expr):
            wrong += [(q.where, "label_values", match[2])] if match[2] not in available else []
    assert not wrong, f"labels their series do not have: {wrong}"


def test_every_series_of_the_registry_has_a_panel() -> None:
    used = {name for q in dash.queries(dash.load()) for name in METRIC.findall(q.expr)}
    missing = [s.exposed for s in registry_series().values() if not any(name in used for name in s.samples())]
    assert not missing, f"series with no panel in the dashboard (add one): {missing}"


def test_the_variables_narrow_every_panel_to_the_chosen_job_and_instance() -> None:
    for q in dash.queries(dash.load()):
        for name, matchers in SELECTOR.findall(q.expr):
            assert SCRAPE_LABELS <= set(MATCHER.findall(matchers)), (q.where, name)
