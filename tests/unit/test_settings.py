"""The settings table (src/mlxhost/settings/table.py): docs, environment, flags, precedence."""

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest

from mlxhost.cli import blas
from mlxhost.cli.main import build_parser, main
from mlxhost.settings.config_file import settings_from_args
from mlxhost.settings.table import (
    SETTINGS,
    SETTINGS_BY_NAME,
    MiB,
    Settings,
    SettingsError,
    env_value,
    settings_markdown,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_docs_match_the_table():
    # A setting added or changed without regenerating the docs fails here.
    assert DOCS.read_text() == settings_markdown(), (
        "docs/settings.md is out of date: python -m mlxhost.settings.table --markdown > docs/settings.md"
    )


def test_every_field_has_one_row_and_names_are_unique():
    assert [row.name for row in SETTINGS] == [f.name for f in attrs.fields(Settings)]
    envs = [row.env for row in SETTINGS if row.env]
    flags = [row.flag for row in SETTINGS if row.flag]
    assert len(envs) == len(set(envs)) and len(flags) == len(set(flags))
    assert all(env.startswith("MLXHOST_") for env in envs)
    assert all(row.help and "|" not in row.help for row in SETTINGS)  # a markdown cell


def test_defaults():
    assert attrs.asdict(Settings()) == {
        "host": "127.0.0.1", "port": 1234, "model": None, "context_window": None,
        "context_windows": {}, "default_max_tokens": 512, "summarize": True,
        "clamp_max_tokens": False, "stream_keepalive": 10.0, "stream_admission_wait": 30.0,
        "stand_in_for": [],
        "image_max_bytes": 20 * MiB, "image_allow_networks": [], "max_queue": 64,
        "max_batch": 0, "prefill_chunk": 512, "prefill_step_ms": 250, "kv_bits": 0, "speculative": True, "kv_group_size": 64, "weights": "auto", "flat_qmm": "auto", "cpu_split": "auto",
        "queue_timeout": 600.0, "api_key": None, "cors_origins": [],
        "max_body_bytes": 64 * MiB, "shutdown_grace": 30.0, "prefix_cache_bytes": None,
        "prefix_cache_dir": None, "prefix_cache_disk_bytes": None,
        "warmup": True, "disabled_plugins": [], "extra_models": [], "log_level": "info",
        "openblas": True, "openblas_path": None, "models_dirs": [], "allow_model_paths": False,
        "ui": True, "config_file": None, "model_configs": [],
        "max_memory": None, "memory_wait": 600.0, "keep_alive": 1800.0,
        "embed_max_models": 2, "embed_keep_alive": None, "embed_batch_tokens": 8192,
        "metrics_public": False,
        "ranks": 1, "hostfile": None, "distributed_backend": "auto", "pipeline": False,
    }
    assert Settings(extra_models=["x"], context_window=128).context_window == 128
    assert Settings().cors_origins is not Settings().cors_origins  # no shared list


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("YES", True), (" On ", True),
     ("0", False), ("False", False), ("no", False), ("OFF", False)],
)
def test_env_booleans(text, value):
    settings = Settings.from_env({"MLXHOST_WARMUP": text, "MLXHOST_SUMMARIZE": text})
    assert settings.warmup is value and settings.summarize is value


def test_env_values():
    settings = Settings.from_env({
        "MLXHOST_MODEL": "qwen",
        "MLXHOST_MAX_QUEUE": "3",
        "MLXHOST_PREFIX_CACHE_BYTES": "4096",  # bytes, unlike the MiB flag
        "MLXHOST_CORS_ORIGINS": " http://a , ,http://b,",
        "MLXHOST_ALLOW_IMAGE_NETWORKS": "127.0.0.1/32",
        "MLXHOST_DISABLED_PLUGINS": "gemma, nothing",
        "MLXHOST_CONTEXT_WINDOW": "",  # empty counts as unset
    })
    assert (settings.model, settings.max_queue, settings.prefix_cache_bytes) == ("qwen", 3, 4096)
    assert settings.cors_origins == ["http://a", "http://b"]
    assert settings.image_allow_networks == ["127.0.0.1/32"]
    assert settings.disabled_plugins == ["gemma", "nothing"]
    assert settings.context_window is None


@pytest.mark.parametrize(
    ("name", "text"),
    [("MLXHOST_MAX_QUEUE", "abc"), ("MLXHOST_WARMUP", "maybe"), ("MLXHOST_CONTEXT_WINDOW", "1.5")],
)
def test_bad_env_value_names_the_variable(name, text):
    with pytest.raises(SettingsError, match=f"^{name}="):
        Settings.from_env({name: text})


def test_precedence_override_env_default():
    env = {"MLXHOST_MAX_QUEUE": "5", "MLXHOST_WARMUP": "0"}
    assert Settings.from_env({}).max_queue == 64
    assert Settings.from_env(env).max_queue == 5
    settings = Settings.from_env(env, max_queue=7, warmup=None)  # None: not given
    assert (settings.max_queue, settings.warmup) == (7, False)


def test_flags_map_through_the_table():
    args = build_parser().parse_args([
        "serve", "--no-warmup", "--prefix-cache-mib", "2", "--cors-origin", "http://a",
        "--cors-origin", "http://b,http://c", "--max-queue", "3", "--log-level", "debug",
        "--no-openblas",
    ])
    env = {"MLXHOST_MAX_QUEUE": "9", "MLXHOST_API_KEY": "k", "MLXHOST_CORS_ORIGINS": "http://z"}
    settings = settings_from_args(args, env)
    assert settings.warmup is False and settings.openblas is False
    assert settings.prefix_cache_bytes == 2 * MiB
    assert settings.cors_origins == ["http://a", "http://b", "http://c"]  # flags replace env
    assert (settings.max_queue, settings.api_key, settings.log_level) == (3, "k", "debug")
    # No flags: the environment, then the defaults.
    settings = settings_from_args(build_parser().parse_args(["serve"]), env)
    assert (settings.max_queue, settings.cors_origins, settings.warmup) == (9, ["http://z"], True)


def test_bad_flag_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--max-queue", "abc"])
    assert exit_info.value.code == 2
    assert "--max-queue: expected an integer, got 'abc'" in capsys.readouterr().err


def test_every_serve_flag_comes_from_the_table(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}
    table = {row.flag for row in SETTINGS if row.flag}
    assert shown == table
    assert table >= {  # the flags mlxhost serve always had
        "--model", "--host", "--port", "--context-window", "--default-max-tokens", "--log-level",
        "--no-summarize", "--allow-image-network", "--max-image-bytes", "--api-key",
        "--cors-origin", "--max-queue", "--prefix-cache-mib", "--no-warmup", "--no-openblas",
    }


def test_serve_builds_settings_from_flags_and_env(monkeypatch):
    try:
        import mlxhost.models.starter as starter
    except ImportError:
        import mlxhost.demo as starter
    import uvicorn

    import mlxhost.api.app

    seen = {}
    monkeypatch.setenv("MLX_PTX_CACHE_DIR", "/tmp/unused")
    monkeypatch.setenv("MLXHOST_MODEL", "auto")
    monkeypatch.setenv("MLXHOST_IMAGE_MAX_BYTES", "100")
    monkeypatch.setattr(blas, "reexec_with_openblas", lambda **kw: seen.update(blas=kw))
    monkeypatch.setattr(starter, "choose_startup_model", lambda: "picked")
    stopped = SimpleNamespace(state=SimpleNamespace(runtime=SimpleNamespace(exit_status=0)))

    def create_app(settings, group=None):
        seen.update(settings=settings, group=group)
        return stopped

    monkeypatch.setattr(mlxhost.api.app, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(run=kw))
    monkeypatch.setattr("signal.signal", lambda *args: None)
    assert main(["serve", "--port", "4321", "--no-openblas"]) == 0
    settings = seen["settings"]
    assert (settings.model, settings.port, settings.image_max_bytes) == ("picked", 4321, 100)
    assert seen["blas"] == {"enabled": False, "path": None}
    assert seen["run"]["port"] == 4321


def test_bad_env_value_stops_serve_before_anything_starts(monkeypatch, capsys):
    monkeypatch.setenv("MLXHOST_MAX_QUEUE", "abc")
    monkeypatch.setattr(blas, "reexec_with_openblas", lambda **kw: pytest.fail("got past settings"))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve"])
    assert exit_info.value.code == 2
    assert "MLXHOST_MAX_QUEUE='abc': expected an integer" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS preload is Linux-only")
def test_blas_reads_the_tables_variables(tmp_path):
    library = tmp_path / "libblas.so.3"
    library.write_text("")
    enabled, path = SETTINGS_BY_NAME["openblas"].env, SETTINGS_BY_NAME["openblas_path"].env
    assert (enabled, path) == ("MLXHOST_OPENBLAS", "MLXHOST_OPENBLAS_PATH")
    assert blas.wanted({path: str(library)}) == str(library)
    assert blas.wanted({path: str(library), enabled: "off"}) is None
    assert blas.wanted({path: str(library)}, enabled=False) is None  # --no-openblas
    assert blas.wanted({enabled: "0"}, enabled=True, path=str(library)) == str(library)
    assert env_value("openblas", {enabled: "no"}) is False
    with pytest.raises(SettingsError, match="MLXHOST_OPENBLAS="):
        blas.wanted({enabled: "maybe"})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pipeline": True}, "--pipeline splits a model over a group"),
        ({"distributed_backend": "ring"}, "--distributed-backend needs a group"),
        ({"ranks": 0}, "--ranks: expected at least 1"),
        ({"ranks": 2, "hostfile": "hosts.json"}, "--ranks and --hostfile"),
        ({"ranks": 2, "distributed_backend": "jaccl"}, "list the ranks in a --hostfile"),
        ({"ranks": 2, "weights": "bf16"}, "--weights bf16 does not apply to sharded models"),
    ],
)
def test_group_settings_that_cannot_work_are_refused(settings, message):
    from mlxhost.distributed import launch

    with pytest.raises(SettingsError, match=message):
        launch.check(Settings(**settings))
    launch.check(Settings())  # one process, nothing to refuse


def test_group_settings_come_from_the_config_file_and_the_environment(tmp_path):
    from mlxhost.settings.config_file import load_settings

    config = tmp_path / "config.toml"
    config.write_text('[server]\nranks = 2\npipeline = true\n')
    settings = load_settings({"config_file": str(config)}, {"MLXHOST_DISTRIBUTED_BACKEND": "ring"})
    assert (settings.ranks, settings.pipeline, settings.distributed_backend) == (2, True, "ring")
