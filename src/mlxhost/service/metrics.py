"""Prometheus metrics at ``GET /metrics`` (text exposition format, names ``mlxhost_*``).

Three sources, one registry per app (``Metrics``; never prometheus_client's
global one, so several apps in one process do not collide):

* an ASGI middleware counts every answered request by endpoint (the route's
  path template), model and status; the service names the model of the
  request in progress with :func:`note_model`;
* the service observes each generation (tokens, time to first token, the time
  of every later token) and the runtime each load;
* a collector reads the runtime's state at scrape time (queue, running
  sequences, swaps, prefix cache, memory, the loaded model).

Metric names and meanings: docs/operations.md, "Metrics".
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlxhost.runtime.runtime import Runtime

# The labels of the request in progress, filled by the service (the model).
_REQUEST: ContextVar[dict[str, str] | None] = ContextVar("mlxhost_request_labels", default=None)

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def note_model(model_id: str) -> None:
    """Label the request in progress (if any) with the model it resolved to."""
    labels = _REQUEST.get()
    if labels is not None:
        labels["model"] = model_id


class Metrics:
    """The app's metrics; ``watch(runtime)`` adds the scrape-time collector."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        # No *_created series beside every counter and histogram (process-wide switch).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "mlxhost_requests", "HTTP requests answered, by endpoint, model and status code",
            ["endpoint", "model", "status"], registry=registry,
        )
        self.prompt_tokens = Counter(
            "mlxhost_prompt_tokens", "Prompt tokens of the generations run", ["model"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "mlxhost_completion_tokens", "Tokens generated", ["model"], registry=registry,
        )
        self.ttft = Histogram(
            "mlxhost_time_to_first_token_seconds",
            "Seconds from the start of a generation to its first token (prefill included)",
            ["model"], buckets=TTFT_BUCKETS, registry=registry,
        )
        self.token_latency = Histogram(
            "mlxhost_time_per_output_token_seconds",
            "Seconds between two consecutive generated tokens of one request",
            ["model"], buckets=TOKEN_BUCKETS, registry=registry,
        )
        self.load_time = Histogram(
            "mlxhost_model_load_seconds", "Seconds a model load took (warm-up included)",
            ["model"], buckets=LOAD_BUCKETS, registry=registry,
        )

    def watch(self, runtime: Runtime) -> None:
        self.registry.register(_RuntimeCollector(runtime))

    def on_load(self, model: str, seconds: float) -> None:
        self.load_time.labels(model).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def middleware(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """An ASGI middleware counting answered requests (Litestar runs it inside the
        routing, so ``path_template`` names the endpoint, and outside the exception
        handlers, so errors are counted with their status)."""
        requests = self.requests

        async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            labels = {"model": ""}
            status = ["500"]

            async def watched_send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status[0] = str(message["status"])
                await send(message)

            token = _REQUEST.set(labels)
            try:
                await app(scope, receive, watched_send)
            finally:
                _REQUEST.reset(token)
                endpoint = scope.get("path_template") or scope.get("path", "")
                requests.labels(endpoint, labels["model"], status[0]).inc()

        return counted


class GenerationObserver:
    """One generation's measurements, fed token by token (``Generation`` in the service)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._ttft = metrics.ttft.labels(model)
        self._latency = metrics.token_latency.labels(model)
        self._prompt = metrics.prompt_tokens.labels(model)
        self._completion = metrics.completion_tokens.labels(model)
        self._last: float | None = None

    def token(self, now: float, started: float) -> None:
        if self._last is None:
            self._ttft.observe(now - started)
        else:
            self._latency.observe(now - self._last)
        self._last = now

    def done(self, prompt_tokens: int, completion_tokens: int) -> None:
        self._prompt.inc(prompt_tokens)
        self._completion.inc(completion_tokens)


class _RuntimeCollector:
    """Gauges and counters read from the runtime at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def describe(self) -> list[Any]:
        return []  # names are only known at collect time; no duplicate checks needed

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        runtime = self._runtime
        status = runtime.status()

        def gauge(name: str, doc: str, value: float | None) -> Any:
            family = GaugeMetricFamily(name, doc)
            if value is not None:
                family.add_metric([], value)
            return family

        def counter(name: str, doc: str, value: float | None) -> Any:
            family = CounterMetricFamily(name, doc)
            if value is not None:
                family.add_metric([], value)
            return family

        yield gauge("mlxhost_queue_depth", "Requests waiting for the model", status.waiting)
        yield gauge("mlxhost_running_requests",
                    "Requests holding the model (their sequences decode together)",
                    status.running)
        memory = status.memory
        yield gauge("mlxhost_memory_waiting_requests",
                    "Requests holding the model but waiting for KV memory",
                    memory.get("requests_waiting"))
        yield counter("mlxhost_model_swaps", "Swaps from one model to another", status.swaps)
        yield counter("mlxhost_model_loads", "Model loads (start-up, swaps, reloads after idle)",
                      runtime.loads)
        yield counter("mlxhost_model_idle_unloads", "Models unloaded after their keep-alive",
                      runtime.idle_unloads)
        loaded = GaugeMetricFamily("mlxhost_model_loaded", "1 for the loaded model", labels=["model"])
        if status.model:
            loaded.add_metric([status.model], 1)
        yield loaded
        batch = status.engine.get("batch")
        if isinstance(batch, dict) and "drafted" in batch:
            yield counter("mlxhost_speculative_drafted_tokens",
                          "Tokens drafted by prompt lookup (speculative decoding)", batch.get("drafted"))
            yield counter("mlxhost_speculative_accepted_tokens",
                          "Drafted tokens the model accepted (accepted / drafted: the acceptance rate)",
                          batch.get("accepted"))
        kv = status.engine.get("kv_cache")
        if isinstance(kv, dict):
            yield gauge("mlxhost_kv_bytes_per_token",
                        "KV-cache bytes per token of the loaded model, as stored (--kv-bits)",
                        kv.get("bytes_per_token"))
        cache = status.engine.get("prefix_cache")
        if isinstance(cache, dict):
            yield counter("mlxhost_prefix_cache_hits", "Prefix-cache lookups that reused KV",
                          cache.get("hits"))
            yield counter("mlxhost_prefix_cache_misses", "Prefix-cache lookups that found nothing",
                          cache.get("misses"))
            yield counter("mlxhost_prefix_cache_reused_tokens",
                          "Prompt tokens served from the prefix cache", cache.get("tokens_reused"))
            yield counter("mlxhost_prefix_cache_evictions",
                          "Prefix-cache entries evicted (budget or memory)", cache.get("evictions"))
            yield gauge("mlxhost_prefix_cache_bytes", "Bytes of KV the prefix cache holds",
                        cache.get("bytes"))
            disk = cache.get("disk")
            if isinstance(disk, dict):
                yield counter("mlxhost_prefix_cache_disk_hits",
                              "Prefix-cache lookups served from the disk tier", disk.get("hits"))
                yield counter("mlxhost_prefix_cache_disk_reused_tokens",
                              "Prompt tokens served from the disk tier", disk.get("tokens_reused"))
                yield counter("mlxhost_prefix_cache_disk_written_bytes",
                              "Bytes of prefix-cache entries written to disk",
                              disk.get("bytes_written"))
                yield counter("mlxhost_prefix_cache_disk_read_bytes",
                              "Bytes of prefix-cache entries read from disk", disk.get("bytes_read"))
                yield counter("mlxhost_prefix_cache_disk_rejected",
                              "Disk entries refused (corrupt, another model version)",
                              disk.get("rejected"))
                yield counter("mlxhost_prefix_cache_disk_evictions",
                              "Disk entries deleted for the disk budget", disk.get("evictions"))
                yield gauge("mlxhost_prefix_cache_disk_bytes",
                            "Bytes of prefix-cache entries on disk", disk.get("bytes"))
        mlx = memory.get("mlx") or {}
        yield gauge("mlxhost_memory_active_bytes", "MLX arrays alive (mx.get_active_memory)",
                    mlx.get("active"))
        yield gauge("mlxhost_memory_cache_bytes", "Freed buffers MLX keeps (mx.get_cache_memory)",
                    mlx.get("cache"))
        yield gauge("mlxhost_memory_peak_bytes", "Most MLX memory active at once (mx.get_peak_memory)",
                    mlx.get("peak"))
        yield gauge("mlxhost_memory_budget_bytes", "The memory budget (--max-memory)",
                    memory.get("budget"))
        yield gauge("mlxhost_memory_weights_bytes", "Bytes of the loaded model's weights",
                    memory.get("weights"))
        yield gauge("mlxhost_memory_kv_reserved_bytes",
                    "KV memory reserved by running requests (prompt + max_tokens)",
                    memory.get("kv_reserved"))
        yield gauge("mlxhost_memory_side_models_bytes",
                    "Bytes counted for embedding / rerank models beside the chat model",
                    memory.get("side_models"))
        process = memory.get("process") or {}
        yield gauge("mlxhost_process_resident_bytes", "Resident memory of the server process",
                    process.get("rss"))
        yield counter("mlxhost_memory_refused", "Requests refused: they never fit in memory (400)",
                      memory.get("refused"))
        yield counter("mlxhost_memory_waited", "Requests that waited for memory",
                      memory.get("waited"))
        yield from _side_metrics(status.side_models, gauge, counter)


def _side_metrics(side: dict[str, Any], gauge: Any, counter: Any) -> Any:
    """Embedding / rerank models beside the chat model (``embedding.slots``)."""
    from prometheus_client.core import GaugeMetricFamily

    loaded = GaugeMetricFamily(
        "mlxhost_side_model_loaded", "1 for each embedding or rerank model loaded beside the "
        "chat model", labels=["model", "kind"])
    nbytes = GaugeMetricFamily("mlxhost_side_model_bytes", "Bytes of a side model's weights",
                               labels=["model"])
    for entry in side.get("models", []):
        loaded.add_metric([entry["model"], entry["kind"]], 1)
        nbytes.add_metric([entry["model"]], entry["bytes"])
    yield loaded
    yield nbytes
    yield counter("mlxhost_side_model_loads", "Embedding / rerank model loads", side.get("loads"))
    batch = side.get("batch") or {}
    yield counter("mlxhost_embed_passes", "Encoder forward passes run (embedding and rerank)",
                  batch.get("passes"))
    yield counter("mlxhost_embed_inputs", "Inputs embedded or scored", batch.get("inputs"))
    yield counter("mlxhost_embed_tokens", "Tokens of the inputs embedded or scored",
                  batch.get("tokens"))
    yield counter("mlxhost_embed_padded_tokens",
                  "Tokens the encoder passes ran, padding included", batch.get("padded_tokens"))
    yield gauge("mlxhost_embed_largest_pass", "Most inputs run in one encoder pass",
                batch.get("largest_pass"))
