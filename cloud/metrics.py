"""The cloud's Prometheus metrics, in one registry per application (served at ``/metrics``).

Ingestion (HTTP and MQTT) counts rows and rejects here; the HTTP middleware of ``cloud.app``
observes request latencies by route template. Every cloud process has its own registry: a
Prometheus server scrapes each process (or its load balancer target) and sums them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
