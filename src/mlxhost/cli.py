"""The ``mlxhost`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import attrs

from mlxhost.settings import SettingsError, add_settings_arguments, settings_from_args


def _serve(args: argparse.Namespace) -> int:
    from mlxhost.blas import reexec_with_openblas

    # Built before the re-exec so that a malformed variable fails at once; cheap.
    settings = settings_from_args(args)
    reexec_with_openblas(enabled=settings.openblas, path=settings.openblas_path)
    # MLX's CUDA backend compiles kernels on first use and caches them on disk,
    # by default under /tmp; a persistent folder pays the compile once per machine.
    os.environ.setdefault(
        "MLX_PTX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "mlxhost", "mlx-ptx")
    )
    import uvicorn

    from mlxhost.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.model == "auto":
        from mlxhost.starter import choose_startup_model

        settings = attrs.evolve(settings, model=choose_startup_model())
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


def _exit_now(code: int) -> None:
    """Leave without running native libraries' teardown.

    Graceful shutdown has finished every response and unloaded the model, so
    nothing is left to do; MLX's and OpenBLAS's static destructors, however,
    can race their own threads at exit and abort (exit -6 instead of 0,
    ml-explore/mlx#3126 and #4110). Flush what Python would flush, then go.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


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
    from mlxhost.plugins import make_plugin_manager
    from mlxhost.registry import ModelRegistry
    from mlxhost.settings import Settings

    # The same facts the server uses: hooks and settings included.
    settings = Settings.from_env()
    registry = ModelRegistry(make_plugin_manager(disabled=settings.disabled_plugins), settings)
    for info in registry.all_models():
        spec = info.spec
        aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        state = "cached" if info.downloaded else "not downloaded"
        print(f"{spec.id}{aliases}  family={spec.family} context={info.context_window} [{state}]")
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

    serve = sub.add_parser(
        "serve", help="start the OpenAI-compatible server",
        description="Start the OpenAI-compatible server. Every flag has a row in docs/settings.md.",
    )
    add_settings_arguments(serve)  # every flag comes from the table in settings.py
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as error:  # a malformed MLXHOST_* variable: no traceback
        parser.error(str(error))


def entry() -> None:
    """The ``mlxhost`` command: :func:`main`, leaving at once after ``serve``."""
    code = main()
    if sys.argv[1:2] == ["serve"]:
        _exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
