"""What `GET /metrics` reports, in Prometheus' text format (prometheus_client, one registry per server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "encore_requests", "Completion requests by outcome", ["outcome"], registry=r
        )  # finished, cancelled (client gone), rejected (400 / 429 / 503), cut (shutdown)
        self.prompt_tokens = Counter("encore_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("encore_generation_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("encore_queue_depth", "Requests waiting for a slot", registry=r)
        self.slots_in_use = Gauge("encore_slots_in_use", "Slots holding a running request", registry=r)
        self.slots_total = Gauge("encore_slots_total", "Slots (concurrent requests) the KV budget holds", registry=r)
        self.kv_in_use = Gauge("encore_kv_cache_bytes_in_use", "K/V bytes written by running requests", registry=r)
        self.kv_reserved = Gauge("encore_kv_cache_bytes_reserved", "K/V bytes allocated for the slots", registry=r)
        self.ttft = Histogram(
            "encore_time_to_first_token_seconds", "Arrival to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inter_token = Histogram(
            "encore_inter_token_latency_seconds", "Gap between a request's tokens", buckets=LATENCY_BUCKETS, registry=r
        )
        self.duration = Histogram(
            "encore_request_duration_seconds", "Arrival to last token", buckets=LATENCY_BUCKETS, registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
