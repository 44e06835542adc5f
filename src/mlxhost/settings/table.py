"""Server settings, declared once.

The ``Settings`` class below is the single source of every setting: each field
is declared with ``setting(...)``, which gives its environment variable,
``mlxhost serve`` flag, parser, default and help text. Everything else is
generated from it: ``Settings.from_env`` (the environment), ``add_settings_arguments``
(the CLI flags; ``mlxhost.settings.config_file.settings_from_args`` puts them over the rest), ``mlxhost.settings.config_file`` (the ``[server]``
table of the TOML config file), ``env_value`` (read before Settings exists, by
cli/blas.py) and ``settings_markdown`` (docs/settings.md, checked by a test).

Precedence: an explicit override (a CLI flag) > the environment > the config
file > the default.
"""

# setting() returns an attrs.field (mutable defaults become attrs.Factory), which ruff
# cannot see: RUF009 would flag every list and dict field.
# ruff: noqa: RUF009

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mlxhost.core.units import parse_duration, parse_size

MiB = 1024 * 1024
_KEY = "mlxhost.setting"
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}


class SettingsError(ValueError):
    """A malformed environment value; the message names the variable."""


# Parsers turn one environment (or flag) string into a value; their ValueError
# messages end up after the variable's or flag's name.
def parse_bool(text: str) -> bool:
    try:
        return _BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}") from None


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def parse_kv_bits(text: str) -> int:
    value = parse_int(text)
    if value not in (0, 4, 8):
        raise ValueError(f"expected 4, 8 or 0 (off), got {text!r}")
    return value


def parse_list(text: str) -> list[str]:
    """Comma-separated, items stripped, empty items dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_batch(text: str) -> int:
    """``auto`` (0: the engine chooses per backend) or a count of at least 1."""
    if text.strip().lower() == "auto":
        return 0
    value = parse_int(text)
    if value < 1:
        raise ValueError(f"expected 'auto' or a count of at least 1, got {text!r}")
    return value


def parse_mib(text: str) -> int:
    """A MiB count, as bytes (``--prefix-cache-mib``; its variable is in bytes)."""
    return parse_int(text) * MiB


@attrs.frozen
class Setting:
    """One row of the table: a ``Settings`` field and how to set it."""

    name: str
    default: Any
    help: str
    env: str | None = None
    flag: str | None = None  # a "--no-x" flag on a bool setting turns it off
    parse: Callable[[str], Any] = str
    flag_parse: Callable[[str], Any] | None = None  # when the flag's unit differs
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    shown_default: str | None = None  # the default as docs and --help say it
    # False: not settable in the config file's [server] table (see ``in_config``).
    config: bool = True

    @property
    def in_config(self) -> bool:
        """Settable as ``[server] name = value`` in the config file: settings with a
        flag or a variable (Python-only ones stay Python-only)."""
        return self.config and (self.env is not None or self.flag is not None)

    def convert(self, text: str) -> Any:
        value = self.parse(text)
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {text!r}")
        return value

    def read_env(self, env: Mapping[str, str]) -> Any:
        """The variable's value, or None when it is absent or empty."""
        text = env.get(self.env) if self.env else None
        if text is None or not text.strip():
            return None
        try:
            return self.convert(text)
        except ValueError as error:
            raise SettingsError(f"{self.env}={text!r}: {error}") from None

    def describe_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if self.default is None or self.default in ([], {}):
            return "none"
        return str(self.default)


def setting(default: Any, help: str, **declaration: Any) -> Any:
    """An attrs field carrying its row of the table (see ``Setting``)."""
    if isinstance(default, (list, dict)):
        assert not default, "mutable defaults must be empty"
        default = attrs.Factory(type(default))
    return attrs.field(default=default, metadata={_KEY: {"help": help, **declaration}})


@attrs.define
class Settings:
    host: str = setting("127.0.0.1", "address to listen on", flag="--host", metavar="HOST")
    port: int = setting(1234, "TCP port to listen on", flag="--port", parse=parse_int,
                        metavar="PORT")
    model: str | None = setting(
        None,
        "model to load at start-up: id, alias or folder; 'auto' picks the seed Qwen model "
        "if cached or downloadable, else builds a small one offline from PyPI; "
        "unset: the first request loads its model",
        env="MLXHOST_MODEL", flag="--model", metavar="MODEL",
    )
    context_window: int | None = setting(
        None, "override every model's context window (tokens)",
        env="MLXHOST_CONTEXT_WINDOW", flag="--context-window", parse=parse_int, metavar="N",
        shown_default="the model's",
    )
    context_windows: dict[str, int] = setting(
        {}, "per-model context window overrides, by model id (Python only)"
    )
    default_max_tokens: int = setting(
        512, "completion tokens reserved when a request gives no max_tokens",
        env="MLXHOST_DEFAULT_MAX_TOKENS", flag="--default-max-tokens", parse=parse_int,
        metavar="N",
    )
    clamp_max_tokens: bool = setting(
        False, "a max_tokens larger than the room the prompt leaves in the context window is "
        "lowered to that room instead of answering 400 context_length_exceeded (the Ollama "
        "API always does this, as Ollama does)",
        env="MLXHOST_CLAMP_MAX_TOKENS", flag="--clamp-max-tokens", parse=parse_bool,
    )
    stream_keepalive: float = setting(
        10.0, "seconds a streamed answer may stay silent while its request waits in the "
        "queue, for a model swap or for its prefill before the API's keep-alive is sent "
        "(Anthropic ping, OpenAI SSE comment, Responses response.in_progress, Ollama empty "
        "chunk; docs/api.md, Streaming and keep-alive); 0: none",
        env="MLXHOST_STREAM_KEEPALIVE", flag="--stream-keepalive", parse=float,
        metavar="SECONDS",
    )
    stream_admission_wait: float = setting(
        30.0, "seconds a streamed request may wait for admission (queue, model swap or load, "
        "prompt check) before its 200 headers go out and keep-alives fill the wait; errors "
        "found within it are HTTP errors (Claude Code retries a too-large max_tokens only "
        "on an HTTP 400), later ones the API's error event",
        env="MLXHOST_STREAM_ADMISSION_WAIT", flag="--stream-admission-wait", parse=float,
        metavar="SECONDS",
    )
    stand_in_for: list[str] = setting(
        [], "model names (glob patterns such as 'claude-*', Claude Code's default models) "
        "that the --model model answers for when no model has that name; the reply names "
        "the model that answered",
        env="MLXHOST_STAND_IN_FOR", flag="--stand-in-for", parse=parse_list, metavar="PATTERN",
    )
    summarize: bool = setting(
        True, "summarize older turns when a conversation does not fit; off rejects it with "
        "context_length_exceeded (a request opts out with \"truncation\": \"disabled\")",
        env="MLXHOST_SUMMARIZE", flag="--no-summarize", parse=parse_bool,
    )
    image_max_bytes: int = setting(
        20 * MiB, "byte cap per image input",
        env="MLXHOST_IMAGE_MAX_BYTES", flag="--max-image-bytes", parse=parse_int, metavar="N",
        shown_default="20971520 = 20 MiB",
    )
    image_allow_networks: list[str] = setting(
        [], "non-public networks image URLs may resolve into (loopback and private ones are "
        "refused otherwise), e.g. 127.0.0.1/32 for local files served over HTTP",
        env="MLXHOST_ALLOW_IMAGE_NETWORKS", flag="--allow-image-network", parse=parse_list,
        metavar="CIDR",
    )
    max_queue: int = setting(
        64, "requests allowed to wait for the model; more get 503 + Retry-After",
        env="MLXHOST_MAX_QUEUE", flag="--max-queue", parse=parse_int, metavar="N",
    )
    max_batch: int = setting(
        0, "sequences of a text model that decode together in one batch (continuous "
        "batching); 1 serves one request at a time; auto: 8 on CPU, on a GPU measured "
        "at each model's load (the largest batch, up to 32, that adds 15% aggregate "
        "speed over the best smaller one). Image prompts and vision-model requests always run alone",
        env="MLXHOST_MAX_BATCH", flag="--max-batch", parse=parse_batch, metavar="N|auto",
        shown_default="auto",
    )
    weights: str = setting(
        "auto", "weights of a quantized checkpoint: as-is, or a dequantized bf16 copy "
        "(faster batches on CUDA); auto picks bf16 on CUDA when --max-batch >= 8 and the "
        "copy fits in half the GPU memory, as-is elsewhere",
        env="MLXHOST_WEIGHTS", flag="--weights", metavar="POLICY",
        choices=("auto", "as-is", "bf16"),
    )
    flat_qmm: str = setting(
        "auto", "give quantized matmuls 2-D inputs from 8 rows up (CUDA runs 3-D batched "
        "inputs row by row); auto measures it on the loaded model; on also pads 2-7 decode "
        "rows to 8, which auto never does (it lost end to end on an H100: docs/benchmarks.md)",
        env="MLXHOST_FLAT_QMM", flag="--flat-qmm", metavar="POLICY", choices=("auto", "on", "off"),
    )
    cpu_split: str = setting(
        "auto", "on a Linux CPU with OpenBLAS, a batch's decode steps multiply each large "
        "weight in one part per core (one BLAS thread each) instead of OpenBLAS's own "
        "threads; auto measures both on the loaded model, on forces it",
        env="MLXHOST_CPU_SPLIT", flag="--cpu-split", metavar="POLICY", choices=("auto", "on", "off"),
    )
    prefill_chunk: int = setting(
        512, "the most prompt tokens a batch prefills per step (per prompt; bounds the "
        "prefill workspace); the prefill time budget sizes each step's chunk below it",
        env="MLXHOST_PREFILL_CHUNK", flag="--prefill-chunk", parse=parse_int, metavar="N",
    )
    prefill_step_ms: int = setting(
        250, "milliseconds of prefill work a batch step may do between two decode steps: "
        "each chunk is sized from the measured prefill rate, at most --prefill-chunk "
        "tokens, so running streams keep decoding while a long prompt goes in (0: always "
        "--prefill-chunk tokens)",
        env="MLXHOST_PREFILL_STEP_MS", flag="--prefill-step-ms", parse=parse_int, metavar="MS",
    )
    kv_bits: int = setting(
        0, "quantize the KV cache to 4 or 8 bits (0: full precision); sliding-window "
        "layers stay full precision, and so does a batch's KV (mlx-lm's batch has no "
        "quantized cache): it saves memory for sequences decoding alone and in the "
        "prefix cache",
        env="MLXHOST_KV_BITS", flag="--kv-bits", parse=parse_kv_bits, metavar="BITS",
    )
    speculative: bool = setting(
        True, "prompt-lookup speculative decoding for a request decoding alone without "
        "logits processors: tokens drafted from the prompt and reply so far, verified in "
        "one pass (greedy output unchanged, sampled output keeps its distribution by "
        "rejection sampling; a request opts out with \"speculative\": false)",
        env="MLXHOST_SPECULATIVE", flag="--no-speculative", parse=parse_bool,
    )
    kv_group_size: int = setting(
        64, "values per scale and bias of the quantized KV cache",
        env="MLXHOST_KV_GROUP_SIZE", flag="--kv-group-size", parse=parse_int, metavar="N",
    )
    queue_timeout: float | None = setting(
        600.0, "seconds a request may wait for the model before 503 (None: no limit; Python only)"
    )
    api_key: str | None = setting(
        None, "require 'Authorization: Bearer KEY' on every endpoint but /health (and "
        "/metrics with --metrics-public)",
        env="MLXHOST_API_KEY", flag="--api-key", metavar="KEY",
    )
    cors_origins: list[str] = setting(
        [], "origins allowed by CORS ('*' for any; CORS is off when none)",
        env="MLXHOST_CORS_ORIGINS", flag="--cors-origin", parse=parse_list, metavar="ORIGIN",
    )
    max_body_bytes: int = setting(
        64 * MiB, "largest request body accepted, in bytes (Python only)",
        shown_default="67108864 = 64 MiB",
    )
    shutdown_grace: float = setting(
        30.0, "seconds in-flight requests get to finish after SIGTERM (Python only)"
    )
    # Bytes internally and in the variable; the flag is in MiB.
    prefix_cache_bytes: int | None = setting(
        None, "memory for the KV prefix cache reused across turns; 0 turns it off "
        "(the variable is in bytes, the flag in MiB)",
        env="MLXHOST_PREFIX_CACHE_BYTES", flag="--prefix-cache-mib", parse=parse_int,
        flag_parse=parse_mib, metavar="MIB", shown_default="the engine's, 2 GiB",
    )
    prefix_cache_dir: str | None = setting(
        None, "keep prefix-cache entries on disk in this folder (safetensors files bound to "
        "the model's identity): entries evicted from RAM, and all of a model's on unload, swap "
        "and shutdown, are written there and loaded back after a swap back or a restart; "
        "unset: RAM only",
        env="MLXHOST_PREFIX_CACHE_DIR", flag="--prefix-cache-dir", metavar="DIR",
    )
    prefix_cache_disk_bytes: int | None = setting(
        None, "disk budget of --prefix-cache-dir, least recently used files deleted first "
        "(the variable is in bytes, the flag in MiB)",
        env="MLXHOST_PREFIX_CACHE_DISK_BYTES", flag="--prefix-cache-disk-mib", parse=parse_int,
        flag_parse=parse_mib, metavar="MIB", shown_default="8 GiB",
    )
    max_memory: int | float | None = setting(
        None, "memory budget of the model server: bytes (2900MiB, 3GB, 3G = GiB) or a "
        "fraction of the device's memory (0.75, 75%); weights, KV cache of the running "
        "requests and prefix cache must fit in it: a request that never fits gets 400 "
        "memory_exceeded, one that fits later waits (docs/operations.md, Memory)",
        env="MLXHOST_MAX_MEMORY", flag="--max-memory", parse=parse_size, metavar="SIZE",
        shown_default="Metal: the recommended working set; CUDA: 90% of the GPU's memory; "
        "elsewhere: 75% of RAM",
    )
    memory_wait: float = setting(
        600.0, "seconds a request may wait for memory held by running requests before 503 "
        "with Retry-After",
        env="MLXHOST_MEMORY_WAIT", flag="--memory-wait", parse=float, metavar="SECONDS",
    )
    keep_alive: float = setting(
        1800.0, "unload the model after it has been idle this long (4s, 30m, 1h; 0: after "
        "each request; -1: never); a request's keep_alive (Ollama) or ttl (OpenAI "
        "endpoints, LM Studio style) overrides it for the time after that request",
        env="MLXHOST_KEEP_ALIVE", flag="--keep-alive", parse=parse_duration,
        metavar="DURATION", shown_default="30m",
    )
    embed_max_models: int = setting(
        2, "embedding and rerank models loaded at once beside the chat model, each in a slot "
        "of its own (the least recently used idle one makes room for another)",
        env="MLXHOST_EMBED_MAX_MODELS", flag="--embed-max-models", parse=parse_int, metavar="N",
    )
    embed_keep_alive: float | None = setting(
        None, "unload an embedding or rerank model after it has been idle this long (4s, 30m, "
        "1h; -1: never); a request's keep_alive overrides it",
        env="MLXHOST_EMBED_KEEP_ALIVE", flag="--embed-keep-alive", parse=parse_duration,
        metavar="DURATION", shown_default="--keep-alive",
    )
    embed_batch_tokens: int = setting(
        8192, "padded tokens in one embedding/rerank forward pass: inputs of concurrent "
        "requests share passes, and a running chat decodes one step between two passes",
        env="MLXHOST_EMBED_BATCH_TOKENS", flag="--embed-batch-tokens", parse=parse_int,
        metavar="N",
    )
    metrics_public: bool = setting(
        False, "serve GET /metrics (Prometheus) without the API key",
        env="MLXHOST_METRICS_PUBLIC", flag="--metrics-public", parse=parse_bool,
    )
    warmup: bool = setting(
        True, "run two tokens through each model right after loading it, so that the first "
        "request is not slower",
        env="MLXHOST_WARMUP", flag="--no-warmup", parse=parse_bool,
    )
    disabled_plugins: list[str] = setting(
        [], "entry-point plugins not to load, by name, e.g. gemma (also read by "
        "`mlxhost plugins` and `mlxhost models`)",
        env="MLXHOST_DISABLED_PLUGINS", parse=parse_list,
    )
    extra_models: list[str] = setting(
        [], "folders served as models besides registered and cached ones (Python only)"
    )
    models_dirs: list[str] = setting(
        [], "a folder whose immediate subfolders holding a config.json are served as models, "
        "each named by its folder name (symlinks leading outside it are not followed)",
        env="MLXHOST_MODELS_DIRS", flag="--models-dir", parse=parse_list, metavar="DIR",
    )
    allow_model_paths: bool = setting(
        False, "let a request name any model folder on the server's disk by its path; "
        "unsafe beyond loopback or on a shared machine (off: only registered, cached, "
        "--model and --models-dir models)",
        env="MLXHOST_ALLOW_MODEL_PATHS", flag="--allow-model-paths", parse=parse_bool,
    )
    ui: bool = setting(
        True, "serve the status and playground page at GET / (docs/ui.md)",
        env="MLXHOST_UI", flag="--no-ui", parse=parse_bool,
    )
    config_file: str | None = setting(
        None, "the TOML config file (docs/config.md); a named file must exist. Unset: "
        "~/.config/mlxhost/config.toml ($XDG_CONFIG_HOME), and on macOS also "
        "~/Library/Application Support/mlxhost/config.toml, when one exists",
        env="MLXHOST_CONFIG", flag="--config", metavar="FILE", config=False,
        shown_default="the platform's, if present",
    )
    model_configs: list[Any] = setting(
        [], "per-model tables of the config file ([models.ALIAS]: repo or path, aliases, "
        "defaults; docs/config.md), as mlxhost.settings.config_file.ModelConfig values"
    )
    ranks: int = setting(
        1, "run the model over N local processes (ranks) joined by MLX's ring backend over "
        "loopback; rank 0 serves HTTP, the others hold a shard each (docs/distributed.md)",
        env="MLXHOST_RANKS", flag="--ranks", parse=parse_int, metavar="N",
    )
    hostfile: str | None = setting(
        None, "an mlx.launch hostfile (JSON, one host per rank): start the group on those "
        "machines through mlx.launch; the first host is rank 0 and serves HTTP "
        "(docs/distributed.md)",
        env="MLXHOST_HOSTFILE", flag="--hostfile", metavar="FILE",
    )
    distributed_backend: str = setting(
        "auto", "the collectives of a group (--ranks takes ring only); auto: the hostfile's "
        "backend, else nccl on CUDA, else ring (mlx.launch's rule)",
        env="MLXHOST_DISTRIBUTED_BACKEND", flag="--distributed-backend", metavar="BACKEND",
        choices=("auto", "ring", "jaccl", "mpi", "nccl"),
    )
    pipeline: bool = setting(
        False, "in a group, give each rank a run of whole layers (pipeline parallel) instead "
        "of a slice of every layer (tensor parallel)",
        env="MLXHOST_PIPELINE", flag="--pipeline", parse=parse_bool,
    )
    log_level: str = setting(
        "info", "log level of mlxhost and uvicorn", flag="--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
    )
    # Read by cli/blas.py before Settings exists (the re-exec must come first), via env_value.
    openblas: bool = setting(
        True, "on Linux CPU, preload OpenBLAS for fast fp32 matmuls (the server re-executes "
        "itself once with LD_PRELOAD set)",
        env="MLXHOST_OPENBLAS", flag="--no-openblas", parse=parse_bool,
    )
    openblas_path: str | None = setting(
        None, "the BLAS library to preload", env="MLXHOST_OPENBLAS_PATH",
        flag="--openblas-path", metavar="PATH", shown_default="Debian's libopenblas0-pthread",
    )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        file_values: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``env`` (default: os.environ) over ``file_values`` (the config
        file's, already converted; see mlxhost.settings.config_file); overrides that are not None win."""
        env = os.environ if env is None else env
        values = dict(file_values or {})
        values.update({s.name: value for s in SETTINGS if (value := s.read_env(env)) is not None})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _row(field: attrs.Attribute) -> Setting:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs.Factory is a class
        default = default.factory()  # type: ignore[union-attr]
    return Setting(name=field.name, default=default, **field.metadata[_KEY])


SETTINGS: tuple[Setting, ...] = tuple(_row(f) for f in attrs.fields(Settings))
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def env_value(name: str, env: Mapping[str, str] | None = None) -> Any:
    """One setting from the environment alone, else its default (for code that runs
    before Settings is built)."""
    row = SETTINGS_BY_NAME[name]
    value = row.read_env(os.environ if env is None else env)
    return row.default if value is None else value


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _flag_help(row: Setting) -> str:
    extra = f"default: {row.describe_default()}"
    if row.env:
        extra += f"; env {row.env}"
    return f"{row.help} ({extra})".replace("%", "%%")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every setting that has one. Flags default to None, so that an
    absent flag leaves the environment or the default in place (settings_from_args)."""
    for row in SETTINGS:
        if row.flag is None:
            continue
        options: dict[str, Any] = {"dest": row.name, "default": None, "help": _flag_help(row)}
        if row.parse is parse_bool:
            # "--no-warmup" stores the opposite of the default.
            options.update(action="store_const", const=not row.default)
            options["help"] = ("turn off: " if row.default else "turn on: ") + options["help"]
        elif row.parse is parse_list:
            # Repeatable, and each value may itself be comma-separated.
            options.update(action="extend", type=_flag_type(parse_list), metavar=row.metavar)
            options["help"] = options["help"].replace(" (default", " (repeatable; default", 1)
        else:
            options.update(type=_flag_type(row.flag_parse or row.parse), metavar=row.metavar,
                           choices=row.choices)
        parser.add_argument(row.flag, **options)


def _flag_cell(row: Setting) -> str:
    if row.flag is None:
        return "—"
    cell = f"`{row.flag} {row.metavar}`" if row.metavar else f"`{row.flag}`"
    if row.choices:
        cell = f"`{row.flag} {{{','.join(row.choices)}}}`"
    return cell + (" (repeatable)" if row.parse is parse_list else "")


def settings_markdown() -> str:
    """docs/settings.md, generated from the table."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from src/mlxhost/settings/table.py by "
        "`python -m mlxhost.settings.table --markdown > docs/settings.md`; "
        "tests/unit/test_settings.py fails when this file is out of date. -->",
        "",
        "Every setting of `mlxhost serve`, declared once in `src/mlxhost/settings/table.py`. "
        "A flag beats its environment variable, which beats the config file's `[server]` "
        "table ([config.md](config.md)), which beats the default. In the "
        "environment, booleans take `1`/`0`, `true`/`false`, `yes`/`no` or `on`/`off`; "
        "lists are comma-separated; an empty variable counts as unset; a malformed value "
        "stops start-up with an error naming the variable. Repeatable flags add to the "
        "list. \"—\" means no variable or no flag: such settings are set from Python "
        "(`Settings(...)`, `create_app(settings)`).",
        "",
        "| setting | environment variable | flag | config file | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for row in SETTINGS:
        env = f"`{row.env}`" if row.env else "—"
        in_file = f"`[server] {row.name}`" if row.in_config else "—"
        lines.append(
            f"| `{row.name}` | {env} | {_flag_cell(row)} | {in_file} | {row.describe_default()} "
            f"| {row.help} |"
        )
    lines += [
        "",
        "Also read, outside this table: `HF_HUB_OFFLINE=1` (never touch the network; only "
        "cached models load), `MLXHOST_TEST_MODELS` (where the starter and test models are "
        "built) and `MLX_PTX_CACHE_DIR` (MLX's CUDA kernel cache; `mlxhost serve` defaults "
        "it to `~/.cache/mlxhost/mlx-ptx`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m mlxhost.settings.table", description=__doc__)
    cli.add_argument("--markdown", action="store_true", help="print docs/settings.md")
    if cli.parse_args().markdown:
        print(settings_markdown(), end="")
    else:
        cli.print_help()
