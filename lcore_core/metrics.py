"""The core's Prometheus collectors (upstream's metric names), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class CoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rest_api_calls = Counter(
            "ls_rest_api_calls_total", "REST API calls by path template and status",
            ["path", "status_code"], registry=registry)
        self.response_duration = Histogram(
            "ls_response_duration_seconds", "Response duration by path template", ["path"],
            buckets=DURATION_BUCKETS, registry=registry)
        self.llm_calls = Counter(
            "ls_llm_calls_total", "LLM calls by provider, model and endpoint",
            ["provider", "model", "endpoint"], registry=registry)
        self.llm_failures = Counter(
            "ls_llm_calls_failures_total", "Failed LLM calls", ["provider", "model"],
            registry=registry)
        self.validation_errors = Counter(
            "ls_llm_validation_errors_total", "Shield violations and rejected requests",
            ["shield"], registry=registry)
        self.tokens_sent = Counter(
            "ls_llm_token_sent_total", "Tokens sent to the LLM", ["provider", "model"],
            registry=registry)
        self.tokens_received = Counter(
            "ls_llm_token_received_total", "Tokens received from the LLM",
            ["provider", "model"], registry=registry)
        self.llm_duration = Histogram(
            "ls_llm_inference_duration_seconds", "Time spent waiting on Llama Stack",
            ["provider", "model"], buckets=DURATION_BUCKETS, registry=registry)
        self.provider_model = Gauge(
            "ls_provider_model_configuration", "Configured provider/model (1 = default)",
            ["provider", "model"], registry=registry)
        self.overhead = Histogram(
            "ls_overhead_seconds", "Request time minus time waiting on Llama Stack", ["path"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=registry)
