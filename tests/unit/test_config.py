"""The TOML config file (mlxhost.settings.config_file): parsing, errors naming file and line,
precedence (request > flag > variable > config file > model default), and per-model
tables reaching the registry and the service (fake engine)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.cli.main import build_parser, main
from mlxhost.core.units import parse_duration
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.models.registry import ModelRegistry
from mlxhost.settings.config_file import (
    ConfigError,
    default_config_paths,
    find_config,
    load_settings,
    parse_config,
    read_config,
    settings_from_args,
)
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import make_fake_model
from mlxhost.testing.http import chat


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# -- parsing ------------------------------------------------------------------------
def test_server_table_values_are_converted_by_the_settings_table(tmp_path):
    config = read_config(write(tmp_path, """
        [server]
        port = 8080
        host = "0.0.0.0"
        warmup = false
        cors_origins = ["http://a", " http://b "]
        weights = "as-is"
        prefix_cache_bytes = 4096
    """))
    assert config.settings == {
        "port": 8080, "host": "0.0.0.0", "warmup": False,
        "cors_origins": ["http://a", "http://b"], "weights": "as-is", "prefix_cache_bytes": 4096,
    }
    assert config.where["warmup"].endswith("config.toml:4")


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("[server]\nport = 1\nmax_qeue = 3\n", ":3:", ["server.max_qeue", "unknown key", "max_queue"]),
        ("[server]\n\nport = \"8080\"\n", ":3:", ["server.port", "expected an integer", "'8080'"]),
        ("[server]\nwarmup = 1\n", ":2:", ["server.warmup", "expected true or false"]),
        ("[server]\nweights = \"fp8\"\n", ":2:", ["server.weights", "as-is", "'fp8'"]),
        ("[server]\nconfig_file = \"x\"\n", ":2:", ["server.config_file", "not settable"]),
        ("[server]\ntemperature = 0.2\n", ":2:", ["server.temperature", "[models.NAME]"]),
        ("port = 8080\n", ":1:", ["port", "[server] table"]),
        ("[models.coder]\nrepo = \"a/b\"\ntemprature = 0.2\n", ":3:",
         ["models.coder.temprature", "unknown key", "temperature"]),
        ("[models.coder]\nrepo = \"a/b\"\ntemperature = 3\n", ":3:",
         ["models.coder.temperature", "out of range", "<= 2"]),
        ("[models.coder]\nrepo = \"a/b\"\ntop_p = 0\n", ":3:", ["models.coder.top_p", "> 0"]),
        ("[models.coder]\nrepo = \"a/b\"\ntop_k = 2.5\n", ":3:", ["models.coder.top_k", "integer"]),
        ("[models.coder]\nrepo = \"../x\"\n", ":2:", ["models.coder.repo", "org/name"]),
        ("[models.coder]\nrepo = \"a/b\"\npath = \"/x\"\n", ":3:", ["models.coder.path", "not both"]),
        ("[models.coder]\nrepo = \"a/b\"\ncontext_window = 0\n", ":3:",
         ["models.coder.context_window", "positive integer"]),
        ("[models.coder]\nrepo = \"a/b\"\nkeep_alive = \"soon\"\n", ":3:",
         ["models.coder.keep_alive", "duration"]),
        ("[models.coder]\nrepo = \"a/b\"\nweights = \"int4\"\n", ":3:", ["models.coder.weights", "bf16"]),
        ("[models.coder]\nrepo = \"a/b\"\naliases = \"c\"\n", ":3:", ["models.coder.aliases", "list"]),
        ("[models.coder]\nrepo = \"a/b\"\nsystem_prompt = 3\n", ":3:", ["models.coder.system_prompt"]),
        # Dotted keys and inline tables point at their own line too.
        ("[models]\ncoder.repo = \"a/b\"\ncoder.top_p = 9\n", ":3:", ["models.coder.top_p"]),
        ("[models]\n\ncoder = { repo = \"a/b\", min_p = 2 }\n", ":3:", ["models.coder.min_p"]),
        ('[models."my coder"]\nrepo = "a/b"\n', ":1:", ['models."my coder"', "spaces"]),
        ("[server\nport = 1\n", ":1:", ["not valid TOML"]),
        ("[server]\nport = 1\nport = 2\n", ":3:", ["not valid TOML"]),
    ],
)
def test_errors_name_the_file_line_and_key(tmp_path, text, where, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        read_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}{where}"), message
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_multiline_strings_do_not_confuse_line_numbers(tmp_path):
    path = write(tmp_path, '''
        [models.coder]
        repo = "a/b"
        system_prompt = """
        temperature = 0.5 is text here
        """
        temperature = 5
    ''')
    with pytest.raises(ConfigError, match=r"config\.toml:6: models\.coder\.temperature"):
        read_config(path)


def test_model_tables(tmp_path):
    config = read_config(write(tmp_path, """
        [models.coder]
        repo = "org/coder-7b"
        aliases = ["c", "code"]
        context_window = 8192
        temperature = 0.2
        top_k = 40
        repetition_penalty = 1.1
        system_prompt = "Be brief."
        keep_alive = "1h30m"
        weights = "bf16"

        [models.qwen]
        keep_alive = -1
    """))
    coder, qwen = config.models
    assert (coder.name, coder.repo, coder.path, coder.aliases) == ("coder", "org/coder-7b", None, ("c", "code"))
    assert coder.new_alias and not qwen.new_alias
    assert coder.defaults.sampling == {"temperature": 0.2, "top_k": 40.0, "repetition_penalty": 1.1}
    assert (coder.defaults.context_window, coder.defaults.system_prompt) == (8192, "Be brief.")
    assert (coder.defaults.keep_alive, coder.defaults.weights) == (5400.0, "bf16")
    assert qwen.defaults.keep_alive == float("inf")  # -1: never
    assert coder.where.endswith("config.toml:1") and qwen.where.endswith("config.toml:12")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("0", 0.0), ("-1", float("inf")), ("-5m", float("inf")), ("4s", 4.0), ("500ms", 0.5),
     ("30m", 1800.0), ("1h30m", 5400.0), ("1.5h", 5400.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "1h 30m", "inf", "nan", "--1", "5m30"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# -- which file --------------------------------------------------------------------
def test_which_file_is_read(tmp_path):
    xdg = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(xdg), "HOME": str(tmp_path / "home")}
    assert default_config_paths(env)[0] == xdg / "mlxhost" / "config.toml"
    assert find_config(None, env) is None  # none there: no file, no error
    default = xdg / "mlxhost" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text("[server]\nport = 1\n")
    assert find_config(None, env) == default
    named = write(tmp_path, "[server]\nport = 2\n", "named.toml")
    assert find_config(None, {**env, "MLXHOST_CONFIG": str(named)}) == named
    other = write(tmp_path, "[server]\nport = 3\n", "other.toml")
    assert find_config(str(other), {**env, "MLXHOST_CONFIG": str(named)}) == other
    with pytest.raises(ConfigError, match="MLXHOST_CONFIG=.*missing.toml: no such file"):
        find_config(None, {**env, "MLXHOST_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(ConfigError, match="--config=.*missing.toml: no such file"):
        find_config(str(tmp_path / "missing.toml"), env)
    assert load_settings({}, env).port == 1
    assert load_settings({}, env).config_file == str(default)


# -- precedence: flag > variable > config file > default ------------------------------
def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    path = write(tmp_path, """
        [server]
        max_queue = 3
        max_batch = 2
        default_max_tokens = 100
    """)
    env = {"MLXHOST_CONFIG": str(path), "MLXHOST_MAX_BATCH": "5", "MLXHOST_MAX_QUEUE": "7"}
    args = build_parser().parse_args(["serve", "--max-queue", "9"])
    settings = settings_from_args(args, env)
    assert settings.max_queue == 9  # flag beats variable and file
    assert settings.max_batch == 5  # variable beats file
    assert settings.default_max_tokens == 100  # file beats default
    assert settings.prefill_chunk == 512  # default
    args = build_parser().parse_args(["serve", "--config", str(write(tmp_path, "[server]\nmax_batch = 4\n", "b.toml"))])
    assert settings_from_args(args, {}).max_batch == 4  # --config names another file


def test_context_window_precedence(tmp_path, fake_models):
    """[models.X] beats [server] (both in the file); a flag or variable beats both."""
    path = write(tmp_path, f"""
        [server]
        context_window = 100

        [models.a]
        path = "{fake_models[0]}"
        context_window = 200
        weights = "bf16"
    """)
    env = {"MLXHOST_CONFIG": str(path)}
    pm = make_plugin_manager()

    def window(settings: Settings, name: str) -> int:
        return ModelRegistry(pm, settings, extra_models=fake_models).resolve(name).context_window

    from_file = load_settings({}, env)
    assert window(from_file, "a") == 200
    assert window(from_file, fake_models[1]) == 100  # the [server] value for the others
    assert window(load_settings({"context_window": 300}, env), "a") == 300  # flag
    from_env = load_settings({}, {**env, "MLXHOST_CONTEXT_WINDOW": "400"})
    assert window(from_env, "a") == 400  # variable
    assert window(load_settings({}, {}), fake_models[1]) == 128  # the model's own
    assert from_file.model_configs[0].defaults.weights == "bf16"
    assert load_settings({"weights": "as-is"}, env).model_configs[0].defaults.weights is None


def test_sampling_precedence_request_over_file_over_generation_config(tmp_path, fake_plugin):
    model = make_fake_model(tmp_path / "m")
    (model / "generation_config.json").write_text(json.dumps({"temperature": 0.7, "top_p": 0.8}))
    path = write(tmp_path, f"""
        [models.m]
        path = "{model}"
        temperature = 0.3
        top_k = 20
        min_p = 0.05
        repetition_penalty = 1.2
        presence_penalty = 0.5
        frequency_penalty = -0.5
    """)
    settings = load_settings({}, {"MLXHOST_CONFIG": str(path)})
    app = create_app(settings, make_plugin_manager(extra=[fake_plugin]))
    with TestClient(app) as client:
        assert chat(client, "m", max_tokens=2).status_code == 200
        assert chat(client, "m", max_tokens=2, temperature=1.5, top_k=3, top_p=0.5,
                    min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0).status_code == 200
    defaulted, requested = fake_plugin.params
    # The file's values, generation_config.json's top_p where the file says nothing.
    assert (defaulted.temperature, defaulted.top_p, defaulted.top_k) == (0.3, 0.8, 20)
    assert (defaulted.min_p, defaulted.repetition_penalty) == (0.05, 1.2)
    assert (defaulted.presence_penalty, defaulted.frequency_penalty) == (0.5, -0.5)
    # The request's own values win; frequency_penalty was not sent: the file's.
    assert (requested.temperature, requested.top_p, requested.top_k) == (1.5, 0.5, 3)
    assert (requested.min_p, requested.repetition_penalty) == (0.0, 1.0)
    assert (requested.presence_penalty, requested.frequency_penalty) == (0.0, -0.5)


def test_system_prompt_is_added_when_the_conversation_has_none(tmp_path, fake_plugin, fake_models):
    path = write(tmp_path, f"""
        [models.a]
        path = "{fake_models[0]}"
        system_prompt = "Answer in French."
    """)
    settings = load_settings({}, {"MLXHOST_CONFIG": str(path)})
    app = create_app(settings, make_plugin_manager(extra=[fake_plugin]))
    with TestClient(app) as client:
        assert chat(client, "a", "Hi", max_tokens=2).status_code == 200
        messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
        body = {"model": "a", "messages": messages, "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        # Other endpoints go through the same service.
        body = {"model": "a", "max_tokens": 2, "messages": [{"role": "user", "content": "Yo"}]}
        assert client.post("/v1/messages", json=body).status_code == 200
        body = {"model": "a", "prompt": "raw text", "max_tokens": 2}
        assert client.post("/v1/completions", json=body).status_code == 200
    texts = [prompt.text for prompt in fake_plugin.prompts]
    assert texts[0] == "system: Answer in French.\nuser: Hi\nassistant: "
    assert texts[1] == "system: Be terse.\nuser: Hi\nassistant: "
    assert texts[2].startswith("system: Answer in French.\nuser: Yo")
    assert texts[3] == "raw text"  # a raw prompt is sent as is


def test_aliases_and_models_list(tmp_path, fake_plugin, fake_models):
    path = write(tmp_path, f"""
        [models.a]
        path = "{fake_models[0]}"
        aliases = ["first", "alpha"]
        keep_alive = "10m"

        [models.remote]
        repo = "org/not-cached"
    """)
    settings = load_settings({}, {"MLXHOST_CONFIG": str(path)})
    registry = ModelRegistry(make_plugin_manager(extra=[fake_plugin]), settings)
    info = registry.resolve("alpha")
    assert info.id == str(Path(fake_models[0]).resolve())
    assert info.spec.aliases == ("a", "first", "alpha")
    assert info.defaults.keep_alive == 600.0
    assert info.keep_alive == 600.0  # what the runtime's idle unload reads (before --keep-alive)
    assert registry.names(info.id) == [info.id, "a", "first", "alpha"]
    remote = registry.resolve("remote")
    assert (remote.id, remote.downloaded, remote.spec.source) == ("org/not-cached", False, "config")
    listed = {i.id: i for i in registry.all_models()}
    assert listed["org/not-cached"].spec.aliases == ("remote",)
    app = create_app(settings, make_plugin_manager(extra=[fake_plugin]))
    with TestClient(app) as client:
        ids = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert ids["first"]["alias_for"] == info.id
        assert ids["remote"] == {**ids["remote"], "alias_for": "org/not-cached", "downloaded": False}
        # Not cached, and the hub is off in tests: the model's own 404, the name kept.
        response = chat(client, "remote", max_tokens=2)
        assert response.status_code == 404 and "org/not-cached" in response.text


@pytest.mark.parametrize(
    ("tables", "words"),
    [
        ('[models.nothing]\ntemperature = 0.1\n', [":1: models.nothing", "no model is known"]),
        ('[models.x]\npath = "{missing}"\n', [":1: models.x.path", "not a model folder"]),
        ('[models.x]\npath = "{a}"\n\n[models.y]\npath = "{a}"\n',
         [":4: models.y", "already has a table ([models.x] at", "config.toml:1"]),
        ('[models.x]\npath = "{a}"\n\n[models.y]\npath = "{b}"\naliases = ["x"]\n',
         [":4: models.y", "'x' already names"]),
    ],
)
def test_table_conflicts_are_startup_errors(tmp_path, fake_plugin, fake_models, tables, words):
    text = tables.format(a=fake_models[0], b=fake_models[1], missing=tmp_path / "missing")
    path = write(tmp_path, text)
    settings = load_settings({}, {"MLXHOST_CONFIG": str(path)})
    with pytest.raises(ConfigError) as error:
        create_app(settings, make_plugin_manager(extra=[fake_plugin]))
    for word in words:
        assert word in str(error.value), str(error.value)


def test_a_table_for_a_registered_alias_adds_defaults(tmp_path):
    """A table named after a plugin's alias (no repo/path) configures that model."""
    path = write(tmp_path, "[models.qwen]\ncontext_window = 1024\naliases = [\"vl\"]\n")
    settings = load_settings({}, {"MLXHOST_CONFIG": str(path)})
    registry = ModelRegistry(make_plugin_manager(), settings)
    info = registry.resolve("vl")
    assert info.id == "mlx-community/Qwen3-VL-4B-Instruct-4bit"
    assert info.context_window == 1024 and info.spec.aliases == ("qwen", "vl")
    # The same name as a new alias for another model is a conflict.
    path = write(tmp_path, '[models.qwen]\nrepo = "org/other"\n', "b.toml")
    with pytest.raises(ConfigError, match="'qwen' already names mlx-community/Qwen3-VL"):
        ModelRegistry(make_plugin_manager(), load_settings({}, {"MLXHOST_CONFIG": str(path)}))


def test_serve_with_a_bad_config_stops_with_the_message(tmp_path, capsys):
    path = write(tmp_path, "[server]\nport = 8080\nmax_batch = \"many\"\n")
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--config", str(path)])
    assert exit_.value.code == 2
    assert f"{path}:3: server.max_batch: expected an integer" in capsys.readouterr().err


def test_parse_config_reports_the_path_it_was_given():
    assert parse_config("[server]\nport = 1\n", "x.toml").path == Path("x.toml")
