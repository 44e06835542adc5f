"""Start a real HTTP server subprocess on a free loopback port (tests, benchmarks).

By default the server is ``mlxhost serve``; benchmarks also start other servers
(``mlx_lm.server``, ``mlx_vlm.server``) through the same class with ``command``
and their own readiness check (``ready``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlxhost_ready(server: ServerProcess) -> bool:
    """Poll once: True once ``/health/ready`` answers 200 (the start-up model is
    loaded and warm: timings taken from then on are not a cold start), or, with
    ``wait_for_model=False``, once ``/health/live`` does. A failed start-up
    load, or a server in ``error``, raises."""
    path = "/health/ready" if server.wait_for_model else "/health/live"
    try:
        response = httpx.get(f"{server.url}{path}", timeout=2)
        if response.status_code == 200:
            return True
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return False
    if body.get("status") == "error" or (body.get("status") == "ok" and body.get("last_error")):
        raise RuntimeError(f"model failed to load: {body.get('reason') or body.get('last_error')}")
    return False


class ServerProcess:
    """``with ServerProcess([...args]) as server: server.url``; stops the server on exit.

    ``args`` go after ``mlxhost serve --port PORT``. The optional keywords are
    for other servers and for callers that manage the environment themselves:

    - ``command``: the whole command line instead of ``mlxhost serve``; it must
      listen on ``port`` (pass ``port=free_port()`` and put it in the command);
    - ``ready``: polled every 0.5 s with the server until it returns True; it
      may raise to give up (default: ``mlxhost_ready``);
    - ``inherit_env``: False runs the server with ``env`` alone instead of this
      process's environment updated with ``env``;
    - ``name``: how error messages call the server; ``stop_timeout``: seconds
      between terminate and kill.

    ``start()``/``stop()`` do what entering and leaving the ``with`` block do.
    A server that fails to become ready is stopped before the error is raised.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        wait_for_model: bool = True,
        startup_timeout: float = 300.0,
        command: Sequence[str] | None = None,
        port: int | None = None,
        ready: Callable[[ServerProcess], bool] | None = None,
        inherit_env: bool = True,
        name: str | None = None,
        stop_timeout: float = 20.0,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.env = {**os.environ, **(env or {})} if inherit_env else dict(env or {})
        self.log_path = log_path
        self.wait_for_model = wait_for_model
        self.startup_timeout = startup_timeout
        serve = [sys.executable, "-m", "mlxhost.cli.main", "serve", "--port", str(self.port)]
        self.command = list(command) if command is not None else [*serve, *self.args]
        self.ready = ready or mlxhost_ready
        self.name = name or ("mlxhost serve" if command is None else Path(self.command[0]).name)
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def start(self) -> ServerProcess:
        """Start the server and wait until ``ready``; OSError if it cannot be started."""
        if self.log_path:
            with open(self.log_path, "w") as log:  # the child keeps its own descriptor
                self.process = self._popen(log)
        else:
            self.process = self._popen(subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _popen(self, log) -> subprocess.Popen:
        return subprocess.Popen(
            self.command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self.log_tail()}"
                )
            if self.ready(self):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not become ready: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def stop(self) -> None:
        """Terminate the server (kill it after ``stop_timeout`` s); no-op once stopped."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc_info) -> None:
        self.stop()
