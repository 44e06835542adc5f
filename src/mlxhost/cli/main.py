"""The ``mlxhost`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import attrs

from mlxhost.settings.config_file import settings_from_args
from mlxhost.settings.table import SettingsError, add_settings_arguments


def _serve(args: argparse.Namespace) -> int:
    from mlxhost.cli.blas import reexec_with_openblas

    # Built before the re-exec so that a malformed variable fails at once; cheap.
    settings = settings_from_args(args)
    from mlxhost.distributed import launch

    launch.check(settings)
    role = launch.role()
    if role == "outside" and settings.hostfile is not None:
        return launch.launch_hostfile(settings, sys.argv[1:])  # the ranks re-exec themselves
    reexec_with_openblas(enabled=settings.openblas, path=settings.openblas_path)
    from mlxhost.cli.lean_imports import hide_torch

    hide_torch()  # before anything imports transformers
    # MLX's CUDA backend compiles kernels on first use and caches them on disk,
    # by default under /tmp; a persistent folder pays the compile once per machine.
    os.environ.setdefault(
        "MLX_PTX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "mlxhost", "mlx-ptx")
    )
    import uvicorn

    from mlxhost.api.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    group = None
    if role == "follower":
        return launch.run_follower(settings)
    if role == "leader":
        group = launch.plan_from_env(settings)
    elif settings.ranks > 1:
        group = launch.start_local_ranks(settings, sys.argv[1:])
    if settings.model == "auto":
        from mlxhost.cli.common import CommandError
        from mlxhost.models.starter import choose_startup_model
        from mlxhost.models.starter.child import StarterBuildFailed

        try:  # torch is hidden here: a starter model that needs building is built by a child
            settings = attrs.evolve(settings, model=choose_startup_model())
        except StarterBuildFailed as error:
            raise CommandError(str(error)) from None
    app = create_app(settings, group=group)
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
    if group is not None:
        launch.end_children(group)
    return int(app.state.runtime.exit_status)


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
    from mlxhost.cli.common import load_settings
    from mlxhost.families.plugins import describe_plugins, make_plugin_manager

    rows = describe_plugins(make_plugin_manager(disabled=load_settings(args).disabled_plugins))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        kind = " (built-in)" if row["builtin"] else ""
        print(f"{row['name']} {row['version']}{kind}  [{row['module']}]")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0


def _convert_gguf(args: argparse.Namespace) -> int:
    from mlxhost.models.gguf_convert import convert_gguf

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
    add_settings_arguments(serve)  # every flag comes from the table in settings/table.py
    serve.set_defaults(func=_serve)

    # The everyday commands, one module each (mlxhost/cli/).
    from mlxhost.cli import ls, ps, pull, rm, run, service
    from mlxhost.cli.common import add_config_argument

    for command in (pull, ls, ps, rm, run, service):
        command.add_parser(sub)

    plugins = sub.add_parser("plugins", help="list installed plugins and their hooks")
    plugins.add_argument("--json", action="store_true")
    add_config_argument(plugins)
    plugins.set_defaults(func=_plugins)

    convert = sub.add_parser("convert-gguf", help="convert a GGUF file into an MLX model folder")
    convert.add_argument("gguf")
    convert.add_argument("out_dir")
    convert.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    convert.add_argument("--quantize", type=int, choices=[4, 8])
    convert.add_argument("--chat-template", help="a Jinja chat template file to include")
    convert.set_defaults(func=_convert_gguf)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mlxhost.cli.common import CommandError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as error:  # a malformed MLXHOST_* variable or config file: no traceback
        parser.error(str(error))
    except CommandError as error:  # one line, exit status 1
        print(f"mlxhost {args.command}: error: {error}", file=sys.stderr)
        return 1


def entry() -> None:
    """The ``mlxhost`` command: :func:`main`, leaving at once after ``serve`` (and
    after ``run``, which may have served in-process)."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    if sys.argv[1:2] in (["serve"], ["run"]):
        _exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
