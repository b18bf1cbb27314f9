"""The cloud's Prometheus metrics, in one registry per application (served at ``/metrics``).

Ingestion (HTTP and MQTT) counts rows and rejects here; the HTTP middleware of ``cloud.app``
observes request latencies by route template. Every cloud process has its own registry: a
Prometheus server scrapes each process (or its load balancer target) and sums them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the services import this module
    from cloud.services.audit import AuditWriter
    from cloud.services.read_cache import ReadCache

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class CloudMetrics:
    """Counters and histograms of one cloud process.

    - ``rows_ingested`` (labels ``channel``: http | mqtt, ``kind``: telemetry | eis | events |
      acks): rows committed by ingestion (duplicates of an already stored seq not counted).
    - ``rejects`` (labels ``channel``, ``reason``): batches or messages refused or set aside.
    - ``request_latency_s`` (labels ``method``, ``route``, ``status``): HTTP request durations,
      ``route`` being the path template (``/api/v1/batteries/{battery_id}``), never the raw path.
    - ``auth_failures`` (label ``reason``): refused logins and tokens.
    - ``mqtt_messages`` (label ``outcome``: stored | duplicate | malformed | mismatch |
      unknown_battery | rejected | poison): uplink MQTT messages by what became of them
      (exposed as ``b2l_mqtt_messages_total``); all but stored/duplicate are dead letters.
    - ``mqtt_commits`` / ``mqtt_commit_latency_s``: group commits of the MQTT consumer and their
      duration; ``mqtt_db_retries``: group commits retried after a database error (not acked).
    - ``mqtt_commands`` (label ``outcome``: published | delivered | failed): commands sent to
      the edge over MQTT.
    - while a read cache runs (``watch_read_cache``): ``b2l_read_cache_lookups_total`` (label
      ``result``: hit | miss), ``b2l_read_cache_live`` (1 while changes are heard), and the
      audit group commit's ``b2l_audit_group_commits_total`` and ``b2l_audit_group_rows_total``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.rows_ingested = Counter(
            "b2l_rows_ingested",
            "Rows stored by ingestion.",
            ("channel", "kind"),
            registry=self.registry,
        )
        self.rejects = Counter(
            "b2l_ingest_rejects",
            "Batches or messages refused or set aside by ingestion.",
            ("channel", "reason"),
            registry=self.registry,
        )
        self.request_latency_s = Histogram(
            "b2l_http_request_duration_seconds",
            "HTTP request duration by route template.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "b2l_auth_failures",
            "Refused logins and tokens.",
            ("reason",),
            registry=self.registry,
        )

        self.mqtt_messages = Counter(
            "b2l_mqtt_messages",
            "Uplink MQTT messages by outcome.",
            ("outcome",),
            registry=self.registry,
        )
        self.mqtt_commits = Counter(
            "b2l_mqtt_commits",
            "Group commits of the MQTT consumer.",
            registry=self.registry,
        )
        self.mqtt_commit_latency_s = Histogram(
            "b2l_mqtt_commit_duration_seconds",
            "Duration of one group commit of the MQTT consumer.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.mqtt_db_retries = Counter(
            "b2l_mqtt_db_retries",
            "Group commits retried after a database error (their messages stay unacknowledged).",
            registry=self.registry,
        )
        self.mqtt_commands = Counter(
            "b2l_mqtt_commands",
            "Commands sent to the edge over MQTT, by outcome.",
            ("outcome",),
            registry=self.registry,
        )

        self.read_cache: ReadCache | None = None
        self.audit_writer: AuditWriter | None = None
        self.registry.register(_ReadCacheCollector(self))

    def watch_read_cache(self, cache: ReadCache | None, writer: AuditWriter | None) -> None:
        """Expose the counts of a ``ReadCache`` and an ``AuditWriter`` (None, None: stop)."""
        self.read_cache, self.audit_writer = cache, writer

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _ReadCacheCollector(Collector):
    """Reads the read cache's and the audit writer's counts at each scrape."""

    def __init__(self, metrics: CloudMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        cache, writer = self._metrics.read_cache, self._metrics.audit_writer
        if cache is not None:
            lookups = CounterMetricFamily(
                "b2l_read_cache_lookups", "Read cache lookups by result.", labels=["result"]
            )
            lookups.add_metric(["hit"], cache.hits)
            lookups.add_metric(["miss"], cache.misses)
            yield lookups
            yield GaugeMetricFamily(
                "b2l_read_cache_live",
                "1 while the read cache hears of changes (else it serves nothing).",
                value=1 if cache.live else 0,
            )
        if writer is not None:
            yield CounterMetricFamily(
                "b2l_audit_group_commits",
                "Statements of the audit group commit.",
                value=writer.batches,
            )
            yield CounterMetricFamily(
                "b2l_audit_group_rows", "Audit rows written by the group commit.", value=writer.rows
            )
