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

from collections.abc import Callable, Iterator
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


# Metrics read from the dicts of the runtime's status, one table per dict with
# several (kind, name, key, help). A dict that is absent (no prefix cache, no disk tier)
# gives none of its metrics; a key that is absent gives its metric with no sample.
Row = tuple[str, str, str, str]
_SPECULATIVE: tuple[Row, ...] = (
    ("counter", "mlxhost_speculative_drafted_tokens", "drafted",
     "Tokens drafted by prompt lookup (speculative decoding)"),
    ("counter", "mlxhost_speculative_accepted_tokens", "accepted",
     "Drafted tokens the model accepted (accepted / drafted: the acceptance rate)"),
)
_PREFIX_CACHE: tuple[Row, ...] = (
    ("counter", "mlxhost_prefix_cache_hits", "hits",
     "Prefix-cache lookups that reused KV"),
    ("counter", "mlxhost_prefix_cache_misses", "misses",
     "Prefix-cache lookups that found nothing"),
    ("counter", "mlxhost_prefix_cache_reused_tokens", "tokens_reused",
     "Prompt tokens served from the prefix cache"),
    ("counter", "mlxhost_prefix_cache_evictions", "evictions",
     "Prefix-cache entries evicted (budget or memory)"),
    ("gauge", "mlxhost_prefix_cache_bytes", "bytes",
     "Bytes of KV the prefix cache holds"),
)
_PREFIX_DISK: tuple[Row, ...] = (
    ("counter", "mlxhost_prefix_cache_disk_hits", "hits",
     "Prefix-cache lookups served from the disk tier"),
    ("counter", "mlxhost_prefix_cache_disk_reused_tokens", "tokens_reused",
     "Prompt tokens served from the disk tier"),
    ("counter", "mlxhost_prefix_cache_disk_written_bytes", "bytes_written",
     "Bytes of prefix-cache entries written to disk"),
    ("counter", "mlxhost_prefix_cache_disk_read_bytes", "bytes_read",
     "Bytes of prefix-cache entries read from disk"),
    ("counter", "mlxhost_prefix_cache_disk_rejected", "rejected",
     "Disk entries refused (corrupt, another model version)"),
    ("counter", "mlxhost_prefix_cache_disk_evictions", "evictions",
     "Disk entries deleted for the disk budget"),
    ("gauge", "mlxhost_prefix_cache_disk_bytes", "bytes",
     "Bytes of prefix-cache entries on disk"),
)
_MLX_MEMORY: tuple[Row, ...] = (
    ("gauge", "mlxhost_memory_active_bytes", "active",
     "MLX arrays alive (mx.get_active_memory)"),
    ("gauge", "mlxhost_memory_cache_bytes", "cache",
     "Freed buffers MLX keeps (mx.get_cache_memory)"),
    ("gauge", "mlxhost_memory_peak_bytes", "peak",
     "Most MLX memory active at once (mx.get_peak_memory)"),
)
_MEMORY: tuple[Row, ...] = (
    ("gauge", "mlxhost_memory_budget_bytes", "budget",
     "The memory budget (--max-memory)"),
    ("gauge", "mlxhost_memory_weights_bytes", "weights",
     "Bytes of the loaded model's weights"),
    ("gauge", "mlxhost_memory_kv_reserved_bytes", "kv_reserved",
     "KV memory reserved by running requests (prompt + max_tokens)"),
    ("gauge", "mlxhost_memory_side_models_bytes", "side_models",
     "Bytes counted for embedding / rerank models beside the chat model"),
    ("counter", "mlxhost_memory_refused", "refused",
     "Requests refused: they never fit in memory (400)"),
    ("counter", "mlxhost_memory_waited", "waited",
     "Requests that waited for memory"),
)
_EMBED_BATCH: tuple[Row, ...] = (
    ("counter", "mlxhost_embed_passes", "passes",
     "Encoder forward passes run (embedding and rerank)"),
    ("counter", "mlxhost_embed_inputs", "inputs",
     "Inputs embedded or scored"),
    ("counter", "mlxhost_embed_tokens", "tokens",
     "Tokens of the inputs embedded or scored"),
    ("counter", "mlxhost_embed_padded_tokens", "padded_tokens",
     "Tokens the encoder passes ran, padding included"),
    ("gauge", "mlxhost_embed_largest_pass", "largest_pass",
     "Most inputs run in one encoder pass"),
)


def _metric(kind: str, name: str, doc: str, value: float | None) -> Any:
    """One unlabelled gauge or counter; no sample when ``value`` is None."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _read(section: Any, rows: tuple[Row, ...]) -> Iterator[Any]:
    """The metrics of ``rows`` from one dict of the status (none if it is absent)."""
    if isinstance(section, dict):
        for kind, name, key, doc in rows:
            yield _metric(kind, name, doc, section.get(key))


class _RuntimeCollector:
    """Gauges and counters read from the runtime at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def describe(self) -> list[Any]:
        return []  # names are only known at collect time; no duplicate checks needed

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        runtime = self._runtime
        status = runtime.status()
        yield _metric("gauge", "mlxhost_queue_depth", "Requests waiting for the model", status.waiting)
        yield _metric("gauge", "mlxhost_running_requests",
                      "Requests holding the model (their sequences decode together)",
                      status.running)
        memory = status.memory
        yield _metric("gauge", "mlxhost_memory_waiting_requests",
                      "Requests holding the model but waiting for KV memory",
                      memory.get("requests_waiting"))
        yield _metric("counter", "mlxhost_model_swaps", "Swaps from one model to another",
                      status.swaps)
        yield _metric("counter", "mlxhost_model_loads",
                      "Model loads (start-up, swaps, reloads after idle)", runtime.loads)
        yield _metric("counter", "mlxhost_model_idle_unloads",
                      "Models unloaded after their keep-alive", runtime.idle_unloads)
        loaded = GaugeMetricFamily("mlxhost_model_loaded", "1 for the loaded model", labels=["model"])
        if status.model:
            loaded.add_metric([status.model], 1)
        yield loaded
        batch = status.engine.get("batch")
        if isinstance(batch, dict) and "drafted" in batch:
            yield from _read(batch, _SPECULATIVE)
        kv = status.engine.get("kv_cache")
        if isinstance(kv, dict):
            yield _metric("gauge", "mlxhost_kv_bytes_per_token",
                          "KV-cache bytes per token of the loaded model, as stored (--kv-bits)",
                          kv.get("bytes_per_token"))
        cache = status.engine.get("prefix_cache")
        yield from _read(cache, _PREFIX_CACHE)
        if isinstance(cache, dict):
            yield from _read(cache.get("disk"), _PREFIX_DISK)
        yield from _read(memory.get("mlx") or {}, _MLX_MEMORY)
        yield from _read(memory, _MEMORY)
        yield _metric("gauge", "mlxhost_process_resident_bytes",
                      "Resident memory of the server process", (memory.get("process") or {}).get("rss"))
        yield from _side_metrics(status.side_models)


def _side_metrics(side: dict[str, Any]) -> Any:
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
    yield _metric("counter", "mlxhost_side_model_loads", "Embedding / rerank model loads",
                  side.get("loads"))
    yield from _read(side.get("batch") or {}, _EMBED_BATCH)
