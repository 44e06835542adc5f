"""``mlxhost service install|uninstall|status``: run ``mlxhost serve`` at login.

Linux: a systemd user unit (``~/.config/systemd/user/mlxhost.service``, enabled
with ``systemctl --user``); macOS: a launchd agent
(``~/Library/LaunchAgents/io.mlxhost.server.plist``, loaded with ``launchctl``).
No root either way. The server's output goes to the platform's log folder
(``~/.local/state/mlxhost/log/mlxhost.log``; ``~/Library/Logs/mlxhost/mlxhost.log``).
The service runs the Python this command runs with, and reads the same config
file (named explicitly when one is in use): settings belong there, since a
service does not see the shell's environment variables.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlxhost.cli.common import (
    CommandError,
    add_config_argument,
    add_json_argument,
    get_health,
    load_settings,
    print_json,
    server_url,
)

UNIT_NAME = "mlxhost.service"
LABEL = "io.mlxhost.server"
# The cache location travels with the service (a service starts with a bare environment).
CARRIED_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "MLXHOST_TEST_MODELS")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "service", help="run the server at login (systemd user unit / launchd agent)",
        description="Install, remove or inspect a login service that runs mlxhost serve "
        "(a systemd user unit on Linux, a launchd agent on macOS; no root).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    install = actions.add_parser(
        "install", help="write the unit or agent and start it",
        description="Write the unit (Linux) or agent (macOS) and start it. Arguments after "
        "-- go to mlxhost serve, e.g. mlxhost service install -- --model qwen.",
    )
    install.add_argument("--no-start", action="store_true",
                         help="only write the file (it starts at the next login)")
    install.add_argument("--print", action="store_true", dest="print_only",
                         help="print the file instead of writing it")
    install.add_argument("serve_args", nargs=argparse.REMAINDER,
                         help="after --: arguments for mlxhost serve")
    uninstall = actions.add_parser("uninstall", help="stop the service and remove its file")
    status = actions.add_parser("status", help="is the service installed and running?")
    add_json_argument(status)
    for action in (install, uninstall, status):
        add_config_argument(action)
        action.add_argument("--platform", choices=("linux", "macos"), help=argparse.SUPPRESS)
        action.set_defaults(func=run)


def current_platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def log_dir(platform: str, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if platform == "macos":
        return _home(env) / "Library" / "Logs" / "mlxhost"
    state = env.get("XDG_STATE_HOME")
    return (Path(state) if state else _home(env) / ".local" / "state") / "mlxhost" / "log"


def service_file(platform: str, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if platform == "macos":
        return _home(env) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    config = env.get("XDG_CONFIG_HOME")
    return (Path(config) if config else _home(env) / ".config") / "systemd" / "user" / UNIT_NAME


def serve_command(config_file: str | None, serve_args: Sequence[str]) -> list[str]:
    """The command the service runs: this Python's mlxhost, the same config file."""
    command = [sys.executable, "-m", "mlxhost.cli.main", "serve"]
    if config_file:
        command += ["--config", str(Path(config_file).expanduser().resolve())]
    return command + list(serve_args)


def carried_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    carried = {"PYTHONUNBUFFERED": "1"}
    carried.update({name: env[name] for name in CARRIED_ENV if env.get(name)})
    return carried


def _systemd_word(word: str) -> str:
    """One ExecStart/Environment word, quoted as systemd reads it (``%`` and ``$`` doubled)."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not any(c in word for c in ' \t"\'\\;'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(command: Sequence[str], log_file: Path, env: Mapping[str, str]) -> str:
    environment = "\n".join(f"Environment={_systemd_word(f'{k}={v}')}" for k, v in env.items())
    return f"""[Unit]
Description=mlxhost: OpenAI-compatible server for local models on MLX
After=network.target

[Service]
Type=exec
ExecStart={" ".join(_systemd_word(word) for word in command)}
{environment}
Restart=on-failure
RestartSec=5
# mlxhost serve lets requests in flight finish for up to 30 s after SIGTERM.
TimeoutStopSec=45
StandardOutput=append:{_systemd_word(str(log_file))}
StandardError=inherit

[Install]
WantedBy=default.target
"""


def plist_dict(command: Sequence[str], log_file: Path, env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "Label": LABEL,
        "ProgramArguments": list(command),
        "EnvironmentVariables": dict(env),
        "RunAtLoad": True,
        # Restart after a crash, not after a clean stop.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": 45,
        # Not throttled as a background job: inference wants the GPU at full speed.
        "ProcessType": "Interactive",
        "StandardOutPath": str(log_file),
        "StandardErrorPath": str(log_file),
    }


def render_plist(command: Sequence[str], log_file: Path, env: Mapping[str, str]) -> bytes:
    return plistlib.dumps(plist_dict(command, log_file, env), sort_keys=False)


def render(platform: str, config_file: str | None, serve_args: Sequence[str],
           env: Mapping[str, str] | None = None) -> bytes:
    """The unit (Linux) or plist (macOS) ``install`` writes."""
    command = serve_command(config_file, serve_args)
    log_file = log_dir(platform, env) / "mlxhost.log"
    carried = carried_env(env)
    if platform == "macos":
        return render_plist(command, log_file, carried)
    return render_unit(command, log_file, carried).encode()


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise CommandError(f"{command[0]} is not installed")
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _must(command: list[str], path: Path) -> None:
    done = _run(command)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise CommandError(
            f"wrote {path}, but `{' '.join(command)}` failed: {reason[-1] if reason else done.returncode}"
        )


def install(args: argparse.Namespace, platform: str) -> int:
    settings = load_settings(args)
    serve_args = [a for a in args.serve_args if a != "--"] if args.serve_args else []
    if "--config" not in serve_args and settings.config_file:
        config_file: str | None = settings.config_file
    else:
        config_file = None
    content = render(platform, config_file, serve_args)
    if args.print_only:
        sys.stdout.write(content.decode())
        return 0
    path = service_file(platform)
    path.parent.mkdir(parents=True, exist_ok=True)
    log_dir(platform).mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    print(f"wrote {path}")
    print(f"the server logs to {log_dir(platform) / 'mlxhost.log'}")
    if args.no_start:
        print("it starts at the next login" + (
            " (or now: systemctl --user enable --now mlxhost)" if platform == "linux"
            else f" (or now: launchctl bootstrap gui/{os.getuid()} {path})"))
        if platform == "linux":
            print("to keep it running while you are logged out: loginctl enable-linger")
        return 0
    if platform == "linux":
        _must(["systemctl", "--user", "daemon-reload"], path)
        _must(["systemctl", "--user", "enable", "--now", UNIT_NAME], path)
    else:
        domain = f"gui/{os.getuid()}"
        _run(["launchctl", "bootout", f"{domain}/{LABEL}"])  # a previous version, if loaded
        _must(["launchctl", "bootstrap", domain, str(path)], path)
    print(f"started; it answers at {server_url(settings)} once its model is loaded (mlxhost ps)")
    return 0


def uninstall(args: argparse.Namespace, platform: str) -> int:
    path = service_file(platform)
    if platform == "linux":
        if shutil.which("systemctl"):
            _run(["systemctl", "--user", "disable", "--now", UNIT_NAME])
    elif shutil.which("launchctl"):
        _run(["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"])
    if not path.exists():
        print(f"not installed ({path} does not exist)")
        return 0
    path.unlink()
    if platform == "linux" and shutil.which("systemctl"):
        _run(["systemctl", "--user", "daemon-reload"])
    print(f"removed {path}")
    return 0


def status(args: argparse.Namespace, platform: str) -> int:
    settings = load_settings(args)
    path = service_file(platform)
    result: dict[str, Any] = {"platform": platform, "file": str(path), "installed": path.exists(),
                              "log": str(log_dir(platform) / "mlxhost.log")}
    state: str | None = None
    if platform == "linux" and shutil.which("systemctl"):
        state = _run(["systemctl", "--user", "is-active", UNIT_NAME]).stdout.strip() or None
        enabled = _run(["systemctl", "--user", "is-enabled", UNIT_NAME]).stdout.strip()
        result["enabled"] = enabled or None
    elif platform == "macos" and shutil.which("launchctl"):
        done = _run(["launchctl", "print", f"gui/{os.getuid()}/{LABEL}"])
        state = "loaded" if done.returncode == 0 else "not loaded"
    result["state"] = state
    url = server_url(settings)
    health = get_health(url)
    result["url"] = url
    result["server"] = None if health is None else {"status": health.get("status"), "model": health.get("model")}
    if args.json:
        print_json(result)
        return 0
    print(f"service  {'installed' if result['installed'] else 'not installed'} ({path})")
    if result["state"]:
        enabled = f", {result['enabled']}" if result.get("enabled") else ""
        print(f"state    {result['state']}{enabled}")
    print(f"log      {result['log']}")
    server = result["server"]
    print(f"server   {url}: " + ("not answering" if server is None
                                  else f"{server['status']}, model {server['model'] or 'none'}"))
    return 0


def run(args: argparse.Namespace) -> int:
    platform = args.platform or current_platform()
    action = {"install": install, "uninstall": uninstall, "status": status}[args.action]
    return action(args, platform)
