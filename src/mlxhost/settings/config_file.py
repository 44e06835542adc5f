"""The TOML config file: a layer of settings under the environment, and per-model tables.

    [server]                      # any setting with a flag or a variable (docs/settings.md)
    port = 8080
    model = "coder"

    [models.coder]                # an alias: for a hub repo ...
    repo = "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"
    temperature = 0.2             # ... with per-model defaults
    system_prompt = "You are a careful programmer."

    [models.qwen]                 # no repo/path: defaults for a model known by that name
    context_window = 32768

Which file: ``--config FILE``, else ``$MLXHOST_CONFIG``, else the platform's
(:func:`default_config_paths`) when it exists. A named file that does not exist,
a syntax error, an unknown key or a bad value stops start-up with a
:class:`ConfigError` naming the file, the line and the key.

Precedence, for every setting: a request's field > a CLI flag > its environment
variable > the config file > the plugin's or model's default. Within the file, a
``[models.X]`` value beats the same ``[server]`` setting (``context_window``,
``weights``) for that model; a flag or a variable beats both.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from mlxhost.core import limits
from mlxhost.core.types import ModelDefaults
from mlxhost.settings.table import (
    SETTINGS,
    SETTINGS_BY_NAME,
    Setting,
    Settings,
    SettingsError,
    parse_batch,
    parse_bool,
    parse_duration,
    parse_int,
    parse_kv_bits,
    parse_list,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(SettingsError):
    """A config file that cannot be used; the message names the file, line and key."""


@attrs.frozen
class ModelConfig:
    """One ``[models.<name>]`` table, checked."""

    # The table's name: a new alias (with ``repo`` or ``path``), or a model the
    # server already knows by that name (without either).
    name: str
    repo: str | None = None
    path: str | None = None
    # Further names for the same model.
    aliases: tuple[str, ...] = ()
    defaults: ModelDefaults = attrs.field(factory=ModelDefaults)
    # "config.toml:12" (the table's line), for errors found later (the registry's).
    where: str = ""

    @property
    def new_alias(self) -> bool:
        """True when the table names a repo or a folder (its name is a new alias)."""
        return self.repo is not None or self.path is not None


@attrs.frozen
class ConfigFile:
    """A config file read and checked: ``settings`` (by name, converted) for the
    ``[server]`` layer, ``models`` in file order."""

    path: Path | None
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    models: tuple[ModelConfig, ...] = ()
    # Where each [server] key was set ("config.toml:3"), for later messages.
    where: Mapping[str, str] = attrs.field(factory=dict)


EMPTY = ConfigFile(path=None)

# Sampling defaults a [models.X] table may set, with the ranges the API accepts
# for the same request fields (one source: mlxhost.core.limits).
SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)
MODEL_KEYS = (
    "repo",
    "path",
    "aliases",
    "context_window",
    *SAMPLING_KEYS,
    "system_prompt",
    "keep_alive",
    "weights",
    "kv_bits",
    "kv_group_size",
)
# [models.X] keys that are also server settings: the table's value replaces the
# [server] one for that model, but a flag or variable replaces both.
OVERRIDDEN_BY_SERVER = ("context_window", "weights", "keep_alive", "kv_bits", "kv_group_size")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME = re.compile(r"[^\s/\\][^\s]*")


def default_config_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where the config file is looked for when none is named, in order."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    xdg = env.get("XDG_CONFIG_HOME")
    paths = [Path(xdg) / "mlxhost" / "config.toml" if xdg else home / ".config" / "mlxhost" / "config.toml"]
    if sys.platform == "darwin":
        paths.append(home / "Library" / "Application Support" / "mlxhost" / "config.toml")
    return paths


def find_config(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The file to read: ``explicit`` (``--config``), ``$MLXHOST_CONFIG``, else the
    first default path that exists; None when there is none."""
    env = os.environ if env is None else env
    named = explicit or (env.get("MLXHOST_CONFIG") or "").strip() or None
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            source = "--config" if explicit else "MLXHOST_CONFIG"
            raise ConfigError(f"{source}={named}: no such file")
        return path
    return next((p for p in default_config_paths(env) if p.is_file()), None)


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags (by setting name; None: not given) > the environment >
    the config file > defaults. The config file is found by :func:`find_config`."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    path = find_config(flags.get("config_file"), env)
    config = read_config(path) if path is not None else EMPTY
    # Settings a flag or a variable gave: they also beat [models.X] values.
    explicit = set(flags) | {
        row.name for row in SETTINGS if row.env and (env.get(row.env) or "").strip()
    }
    models = tuple(_without(model, explicit) for model in config.models)
    file_values = {**config.settings, "model_configs": list(models)}
    if path is not None:
        file_values["config_file"] = str(path)
    return Settings.from_env(env, file_values=file_values, **flags)


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from parsed flags (add_settings_arguments) over the environment over
    the config file (``--config``, ``MLXHOST_CONFIG`` or the platform's)."""
    flags = {row.name: getattr(args, row.name, None) for row in SETTINGS if row.flag}
    return load_settings(flags, env)


def _without(model: ModelConfig, explicit: set[str]) -> ModelConfig:
    """The table with the values a flag or variable overrides removed."""
    drop: dict[str, Any] = {key: None for key in OVERRIDDEN_BY_SERVER if key in explicit}
    if not drop:
        return model
    return attrs.evolve(model, defaults=attrs.evolve(model.defaults, **drop))


def read_config(path: Path) -> ConfigFile:
    """Parse and check one config file (ConfigError on any problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path | str = "config.toml") -> ConfigFile:
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)".
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = f":{found.group(1)}" if found else ""
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(f"{path}{line}: not valid TOML: {message}") from None
    lines = _KeyLines(text)
    checker = _Checker(path, lines)
    settings: dict[str, Any] = {}
    where: dict[str, str] = {}
    models: list[ModelConfig] = []
    for key, value in data.items():
        if key == "server":
            checker.table(value, ("server",))
            for name, item in value.items():
                settings[name] = checker.server_value(name, item)
                where[name] = checker.at(("server", name))
        elif key == "models":
            checker.table(value, ("models",))
            for name, table in value.items():
                models.append(checker.model(name, table))
        else:
            checker.fail((key,), "unknown key: the file has a [server] table and [models.NAME] tables")
    return ConfigFile(path=path, settings=settings, models=tuple(models), where=where)


class _Checker:
    def __init__(self, path: Path, lines: _KeyLines) -> None:
        self.path = path
        self.lines = lines

    def at(self, keys: tuple[str, ...]) -> str:
        line = self.lines.find(keys)
        return f"{self.path}:{line}" if line else str(self.path)

    def fail(self, keys: tuple[str, ...], problem: str) -> None:
        raise ConfigError(f"{self.at(keys)}: {_dotted(keys)}: {problem}")

    def table(self, value: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            self.fail(keys, f"expected a table ([{_dotted(keys)}]), got {_toml_type(value)}")

    # -- [server] ---------------------------------------------------------------
    def server_value(self, name: str, value: Any) -> Any:
        keys = ("server", name)
        row = SETTINGS_BY_NAME.get(name)
        if row is None or not row.in_config:
            allowed = ", ".join(r.name for r in SETTINGS if r.in_config)
            hint = ""
            if row is not None:
                hint = " (not settable in the config file)"
            elif name in MODEL_KEYS:
                hint = " (a per-model key: put it in a [models.NAME] table)"
            self.fail(keys, f"unknown key{hint}{_did_you_mean(name, allowed)}; [server] takes: {allowed}")
        assert row is not None
        try:
            return convert(row, value)
        except ValueError as exc:
            self.fail(keys, str(exc))

    # -- [models.NAME] ----------------------------------------------------------
    def model(self, name: str, table: Any) -> ModelConfig:
        keys = ("models", name)
        self.table(table, keys)
        if not _NAME.fullmatch(name):
            self.fail(keys, "a model name may not contain spaces or start with a slash")
        for key in table:
            if key not in MODEL_KEYS:
                self.fail(
                    (*keys, key),
                    f"unknown key{_did_you_mean(key, ', '.join(MODEL_KEYS))}; "
                    f"a [models.NAME] table takes: {', '.join(MODEL_KEYS)}",
                )

        def get(key: str, check: Any) -> Any:
            if key not in table:
                return None
            try:
                return check(table[key])
            except ValueError as exc:
                self.fail((*keys, key), str(exc))

        repo = get("repo", _repo_id)
        path = get("path", _folder)
        if repo is not None and path is not None:
            self.fail((*keys, "path"), "give either repo or path, not both")
        sampling = {k: v for k in SAMPLING_KEYS if (v := get(k, _sampling_check(k))) is not None}
        defaults = ModelDefaults(
            context_window=get("context_window", _positive_int),
            sampling=sampling,
            system_prompt=get("system_prompt", _string),
            keep_alive=get("keep_alive", _duration),
            weights=get("weights", _choice(SETTINGS_BY_NAME["weights"])),
            kv_bits=get("kv_bits", _kv_bits),
            kv_group_size=get("kv_group_size", _positive_int),
        )
        return ModelConfig(
            name=name,
            repo=repo,
            path=path,
            aliases=get("aliases", _names) or (),
            defaults=defaults,
            where=self.at(keys),
        )


# -- value checks: each returns the value or raises ValueError -------------------
def convert(row: Setting, value: Any) -> Any:
    """A [server] value of TOML type, as the setting's type (strict: no "8" for 8)."""
    if row.parse is parse_bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_type(value)}")
        return value
    if row.parse is parse_int:
        if not _is_int(value):
            raise ValueError(f"expected an integer, got {_toml_type(value)}")
        return value
    if row.parse is parse_list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {_toml_type(value)}")
        return [v.strip() for v in value if v.strip()]
    if row.parse is parse_kv_bits and _is_int(value):
        return parse_kv_bits(str(value))
    if row.parse is parse_batch and _is_int(value):
        return parse_batch(str(value))
    if row.parse is parse_duration and isinstance(value, (int, float)) and not isinstance(value, bool):
        return parse_duration(str(value))
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_toml_type(value)}")
    return row.convert(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"expected a positive integer, got {_show(value)}")
    return int(value)


def _kv_bits(value: Any) -> int:
    if not _is_int(value) or value not in (0, 4, 8):
        raise ValueError(f"expected 4, 8 or 0 (off), got {_show(value)}")
    return int(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_toml_type(value)}")
    return value


def _repo_id(value: Any) -> str:
    if not isinstance(value, str) or not _REPO_ID.fullmatch(value) or ".." in value:
        raise ValueError(f"expected a hub repo id such as \"org/name\", got {_show(value)}")
    return value


def _folder(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a folder path, got {_show(value)}")
    return str(Path(value).expanduser())


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.fullmatch(v) for v in value):
        raise ValueError(f"expected a list of names without spaces, got {_show(value)}")
    return tuple(value)


def _duration(value: Any) -> float:
    if _is_number(value):
        return parse_duration(str(value))
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"expected a duration such as \"30m\" or seconds, got {_toml_type(value)}")


def _choice(row: Setting) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in (row.choices or ()):
            raise ValueError(f"expected one of {', '.join(row.choices or ())}, got {_show(value)}")
        return value

    return check


def _sampling_check(key: str) -> Any:
    bounds = limits.SAMPLING[key]

    def check(value: Any) -> float:
        if key == "top_k" and not _is_int(value):
            raise ValueError(f"expected an integer, got {_show(value)}")
        if not _is_number(value):
            raise ValueError(f"expected a number, got {_show(value)}")
        if ("minimum" in bounds and value < bounds["minimum"]) or (
            "maximum" in bounds and value > bounds["maximum"]
        ) or ("exclusiveMinimum" in bounds and value <= bounds["exclusiveMinimum"]):
            raise ValueError(f"{value} is out of range ({_describe(bounds)})")
        return float(value)

    return check


def _describe(bounds: Mapping[str, float]) -> str:
    parts = []
    if "minimum" in bounds:
        parts.append(f">= {bounds['minimum']}")
    if "exclusiveMinimum" in bounds:
        parts.append(f"> {bounds['exclusiveMinimum']}")
    if "maximum" in bounds:
        parts.append(f"<= {bounds['maximum']}")
    return " and ".join(parts)


def _did_you_mean(name: str, allowed: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, allowed.split(", "), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({_show(value)})"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(keys: tuple[str, ...]) -> str:
    return ".".join(k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else f'"{k}"' for k in keys)


# -- where each key is: tomllib gives values, not lines ----------------------------
_HEADER = re.compile(r"^\s*\[(?!\[)(.*?)\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'))*)\s*=""")
_KEY_PART = re.compile(r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'""")


class _KeyLines:
    """Line numbers of tables and keys, found by scanning the text line by line
    (headers and ``key =`` lines, dotted keys included; multi-line strings are
    skipped). Good enough to point at a key; never used to read values."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if in_string in line:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header:
                table = _split_key(header.group(1))
                self._lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                full = (*table, *_split_key(key.group(1)))
                for depth in range(len(table) + 1, len(full) + 1):
                    self._lines.setdefault(full[:depth], number)
                rest = line[key.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_string = quote

    def find(self, keys: tuple[str, ...]) -> int | None:
        for depth in range(len(keys), 0, -1):
            if keys[:depth] in self._lines:
                return self._lines[keys[:depth]]
        return None


def _split_key(text: str) -> tuple[str, ...]:
    parts = []
    for part in _KEY_PART.findall(text):
        if part[0] in "\"'":
            part = tomllib.loads(f"k = {part}")["k"]
        parts.append(part)
    return tuple(parts)
