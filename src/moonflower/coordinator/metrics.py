"""`Metrics`: what a coordinator replica counts for Prometheus, in a registry of its own.

Each replica serves its own numbers at `/metrics` (Prometheus sums across replicas), and
each app has its own `CollectorRegistry`, so several apps in one process (tests) never mix
theirs. Parts record into it through small methods called where the event happens: a request
ends (`access.py`'s middleware), a job closes (`closing.JobCloser`), a request waited its
turn (`queueing.ModelQueues`), a settlement batch lands or fails (`settler.Settler`), a
database statement runs (engine events). What is a state rather than an event (providers by
trust level, queue depth, open holds) is read when Prometheus scrapes.

Labels are bounded: route templates, never paths; models only as the registry knows them;
no account, key or job ids. Nothing here sees content.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Connection

from moonflower.ledger.database import Database
from moonflower.ledger.jobs import JobRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
MAX_MODEL_LABELS = 200
"""Models beyond this many are counted under `other`: labels must stay bounded."""


class _Scraped(Collector):
    """Gauges read at scrape time from the coordinator's live state."""

    def __init__(self) -> None:
        self.providers: Callable[[], dict[tuple[str, str], int]] = dict
        self.queue_depths: Callable[[], dict[str, int]] = dict
        self.open_holds: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[Metric]:
        providers = GaugeMetricFamily(
            "moonflower_providers",
            "Provider connections on this replica, by model and trust level.",
            labels=["model", "trust_level"],
        )
        for (model, trust), count in sorted(self.providers().items()):
            providers.add_metric([model, trust], count)
        yield providers
        depth = GaugeMetricFamily(
            "moonflower_queue_depth", "Requests waiting for a slot, by model.", labels=["model"]
        )
        for model, waiting in sorted(self.queue_depths().items()):
            depth.add_metric([model], waiting)
        yield depth
        yield GaugeMetricFamily(
            "moonflower_open_holds",
            "Jobs running on this replica that hold credit (one hold each).",
            value=self.open_holds(),
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moonflower_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "moonflower_http_request_duration_seconds",
            "From a request's arrival to the end of its answer (streams included).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "moonflower_time_to_first_token_seconds",
            "From a job's start to its first output token, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_seconds = Histogram(
            "moonflower_inter_token_latency_seconds",
            "A job's mean gap between output tokens after the first, by model.",
            ["model"],
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "moonflower_prompt_tokens", "Prompt tokens of closed jobs.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "moonflower_completion_tokens",
            "Output tokens relayed to consumers by closed jobs.",
            ["model"],
            registry=r,
        )
        self.jobs = Counter(
            "moonflower_jobs",
            "Jobs closed, by model and how they ended (completed, cancelled, failed).",
            ["model", "outcome"],
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "moonflower_queue_wait_seconds",
            "How long requests that had to wait for a slot waited, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_timeouts = Counter(
            "moonflower_queue_timeouts",
            "Requests turned away because the wait for a slot was full or ran out.",
            ["model"],
            registry=r,
        )
        self.settlement_seconds = Histogram(
            "moonflower_settlement_batch_duration_seconds",
            "Writing one batch of settlements to the ledger.",
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.settlements = Counter(
            "moonflower_settlements", "Job settlements written to the ledger.", registry=r
        )
        self.settlement_failures = Counter(
            "moonflower_settlement_failures",
            "Settlement batches the ledger refused or could not take (each is retried).",
            registry=r,
        )
        self.db_seconds = Histogram(
            "moonflower_database_statement_duration_seconds",
            "One statement on the ledger's database.",
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.scraped = _Scraped()
        r.register(self.scraped)
        self._models: set[str] = set()

    def model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return "other"
        self._models.add(model)
        return model

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def job_closed(self, record: JobRecord) -> None:
        model = self.model_label(record.model)
        self.jobs.labels(model, record.status).inc()
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.completion_tokens.labels(model).inc(record.completion_tokens)
        if record.first_token_ms is None:
            return
        self.first_token_seconds.labels(model).observe(record.first_token_ms / 1000)
        if record.completion_tokens > 1:
            decoding_ms = max(record.duration_ms - record.first_token_ms, 0)
            gap_s = decoding_ms / 1000 / (record.completion_tokens - 1)
            self.inter_token_seconds.labels(model).observe(gap_s)

    def waited(self, model: str, seconds: float) -> None:
        self.queue_wait_seconds.labels(self.model_label(model)).observe(seconds)

    def turned_away(self, model: str) -> None:
        self.queue_timeouts.labels(self.model_label(model)).inc()

    def settled(self, count: int, seconds: float) -> None:
        self.settlements.inc(count)
        self.settlement_seconds.observe(seconds)

    def settlement_failed(self) -> None:
        self.settlement_failures.inc()

    def watch_database(self, db: Database) -> None:
        """Time every statement on the database's engines."""
        for engine in db.engines():
            event.listen(engine.sync_engine, "before_cursor_execute", _started)
            event.listen(engine.sync_engine, "after_cursor_execute", self._statement_done)

    def _statement_done(self, conn: Connection, *_: Any) -> None:
        started = conn.info.get(_STARTED)
        if started:
            self.db_seconds.observe(time.perf_counter() - started.pop())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_STARTED = "moonflower_statement_started"


def _started(conn: Connection, *_: Any) -> None:
    conn.info.setdefault(_STARTED, []).append(time.perf_counter())
