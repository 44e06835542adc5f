"""Start a real ``mlxhost serve`` subprocess on a free loopback port (tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``with ServerProcess([...args]) as server: server.url``; stops the server on exit."""

    def __init__(
        self,
        args: list[str] = (),
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        wait_for_model: bool = True,
        startup_timeout: float = 300.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.wait_for_model = wait_for_model
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        command = [sys.executable, "-m", "mlxhost.cli", "serve", "--port", str(self.port), *self.args]
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlxhost serve exited with {self.process.returncode}: {self.log_tail()}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=2).json()
                if not self.wait_for_model or (health["model"] and not health["loading"]):
                    return
                if health.get("last_error") and not health["loading"]:
                    raise RuntimeError(f"model failed to load: {health['last_error']}")
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlxhost serve did not become ready: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def __exit__(self, *exc_info) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
