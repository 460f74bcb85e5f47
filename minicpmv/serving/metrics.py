"""`/metrics` in the Prometheus text format (prometheus-client): the worker's request counts and
queue as read at scrape time, token counters and latency histograms from every answer."""

from __future__ import annotations


class ServerMetrics:
    """One registry per server (never the global one: tests and embedders run several)."""

    def __init__(self, worker, model_name: str):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.registry = CollectorRegistry()
        labels = {"model": model_name}

        class WorkerState:  # read at scrape time: nothing to keep in step
            def collect(self):
                status = worker.status()
                requests = CounterMetricFamily("minicpmv_requests", "requests by outcome", labels=["model", "outcome"])
                for outcome in ("completed", "cancelled", "refused", "failed"):
                    requests.add_metric([model_name, outcome], status[outcome])
                yield requests
                yield GaugeMetricFamily(
                    "minicpmv_requests_admitted", "requests queued or running", value=status["admitted"]
                )
                yield GaugeMetricFamily(
                    "minicpmv_image_pixels_reserved", "decoded image pixels held", value=status["image_pixels"]
                )

        self.registry.register(WorkerState())
        self.prompt_tokens = Counter(
            "minicpmv_prompt_tokens", "prompt tokens read (images expanded)", ["model"], registry=self.registry
        ).labels(**labels)
        self.completion_tokens = Counter(
            "minicpmv_completion_tokens", "tokens generated", ["model"], registry=self.registry
        ).labels(**labels)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
        self.first_token = Histogram(
            "minicpmv_time_to_first_token_seconds", "image encoding + prefill", ["model"], buckets=buckets,
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.decode = Histogram(
            "minicpmv_decode_seconds", "decoding time of an answer", ["model"], buckets=buckets, registry=self.registry
        ).labels(**labels)
        worker.on_answer = self.observe

    def observe(self, generation) -> None:
        self.prompt_tokens.inc(len(generation.prompt_token_ids))
        self.completion_tokens.inc(len(generation.token_ids))
        self.first_token.observe(generation.first_token_seconds)
        self.decode.observe(generation.decode_seconds)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
