"""The series of `common.observability.metrics.REGISTRY`, as the dashboard and the README name them."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase

from common.observability import metrics

SCRAPE_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""


@dataclass(frozen=True)
class Series:
    name: str
    """The family's name: a counter's without `_total`, a histogram's without `_bucket`/`_sum`/`_count`."""
    type: str
    labels: tuple[str, ...]
    help: str

    @property
    def exposed(self) -> str:
        """The name a query or the README uses: a counter's with `_total`, the others' as declared."""
        return f"{self.name}_total" if self.type == "counter" else self.name

    def samples(self) -> dict[str, frozenset[str]]:
        """Each sample name PromQL can select, with the labels it carries (scrape labels included)."""
        labels = frozenset(self.labels) | SCRAPE_LABELS
        if self.type == "counter":
            return {f"{self.name}_total": labels}
        if self.type == "histogram":
            return {
                f"{self.name}_bucket": labels | {"le"},
                f"{self.name}_sum": labels,
                f"{self.name}_count": labels,
            }
        return {self.name: labels}


def registry_series() -> dict[str, Series]:
    """Every series of the registry by family name. The family names and types come from the registry's
    own `collect()`; the label names from its collectors (a labelled family with no child yet collects
    no sample to read them from)."""
    labels = {
        collector._name: tuple(collector._labelnames)
        for collector in metrics.REGISTRY._collector_to_names
        if isinstance(collector, MetricWrapperBase)
    }
    families = list(metrics.REGISTRY.collect())
    assert set(labels) == {f.name for f in families}, "every family of REGISTRY is a prometheus_client metric"
    return {f.name: Series(f.name, f.type, labels[f.name], f.documentation) for f in families}


def sample_names() -> dict[str, frozenset[str]]:
    """Every selectable sample name of the registry, with its labels."""
    return {name: labels for s in registry_series().values() for name, labels in s.samples().items()}
