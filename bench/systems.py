"""The systems under test, each behind the same small interface.

- ``mlxhost``: ``mlxhost serve`` over HTTP (it preloads OpenBLAS itself on Linux);
- ``raw-mlx-lm`` / ``raw-mlx-vlm``: the engine called in-process
  (``mlx_lm.stream_generate`` / ``mlx_vlm.stream_generate``), in a worker
  process of its own so that the benchmark process never holds a model;
- ``mlx-lm-server`` (``python -m mlx_lm server``) and ``mlx-vlm-server``
  (``python -m mlx_vlm.server --host 127.0.0.1``) on the same model folder
  (``PEERS``: one implementation, two entries).

The HTTP servers are started by ``mlxhost.testing.server.ServerProcess``, the
same class the integration tests use.

Every process gets the same environment: no network (``HF_HUB_OFFLINE=1``) and,
unless a system is told otherwise, OpenBLAS preloaded exactly as
``mlxhost serve`` preloads it, so the comparison is about the serving layer
and not about which BLAS a process happened to get.

A system that cannot start or serve a model raises ``SystemUnavailable``;
``bench.runner`` records the reason as "n/a" and goes on.

    python -m bench.systems raw-worker {lm,vlm}     # the in-process worker (internal)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import Sample, stream_chat
from bench.prompts import Messages
from mlxhost.testing.server import ServerProcess, free_port


class SystemUnavailable(Exception):
    """The system could not start or load the model; ``str(exc)`` says why."""


# --- environment -----------------------------------------------------------------


def base_env() -> dict[str, str]:
    """This process's environment without any BLAS preload, offline."""
    env = dict(os.environ)
    kept = [
        p for p in env.get("LD_PRELOAD", "").split(":") if p and "blas" not in Path(p).name.lower()
    ]
    if kept:
        env["LD_PRELOAD"] = ":".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    env.pop("MLXHOST_BLAS_REEXEC", None)
    env.pop("MLXHOST_OPENBLAS", None)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def blas_env(openblas: bool) -> dict[str, str]:
    """The environment of a child that does not preload by itself (raw engine, peers)."""
    env = base_env()
    if not openblas:
        env["MLXHOST_OPENBLAS"] = "0"
        return env
    from mlxhost.cli.blas import preload_env

    return preload_env(env)


def wait_idle(pid: int, *, timeout: float, busy_below: float = 0.15, window: float = 1.0) -> None:
    """Wait until process ``pid`` (and its children) use under ``busy_below`` of a core.

    Peers report healthy before their model has finished loading; a load keeps a
    core busy, so a quiet process is a loaded one.
    """
    try:
        import psutil
    except ImportError:
        time.sleep(3)
        return
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return

    def cpu() -> float:
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    deadline = time.monotonic() + timeout
    last = cpu()
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu()
        if now - last < busy_below * window:
            return
        last = now


# --- HTTP servers -----------------------------------------------------------------


class HttpServerSystem:
    """A server started on a free loopback port; requests name the model folder.

    The process itself is a ``mlxhost.testing.server.ServerProcess`` (the one the
    integration tests use); subclasses say which one (``server``).
    """

    name = "server"
    engine = "?"
    openblas = True

    def __init__(self, log_dir: Path, *, startup_timeout: float = 900.0) -> None:
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.server: ServerProcess | None = None
        self.url = ""
        self.model = ""
        self.log_path: Path | None = None
        self.extra_env: dict[str, str] = {}  # e.g. MLX_PTX_CACHE_DIR on CUDA

    # subclasses -----------------------------------------------------------------
    def server_process(self, model: Path, port: int, **common: Any) -> ServerProcess:
        """The server for ``model`` on ``port``; ``common`` goes to ``ServerProcess``."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return blas_env(self.openblas)

    # interface ------------------------------------------------------------------
    @property
    def process(self) -> subprocess.Popen | None:
        return self.server.process if self.server else None

    def start(self, model: Path) -> float:
        port = free_port()
        self.model = str(model)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}-{port}.log"
        self.server = self.server_process(
            model,
            port,
            env={**self.env(), **self.extra_env},
            inherit_env=False,
            log_path=self.log_path,
            startup_timeout=self.startup_timeout,
            name=self.name,
            stop_timeout=30,
        )
        self.url = self.server.url
        started = time.perf_counter()
        try:
            self.server.start()  # stops the server itself when it fails
        except TimeoutError as exc:  # (before OSError: TimeoutError is one)
            raise SystemUnavailable(f"not ready after {self.startup_timeout:.0f}s") from exc
        except OSError as exc:
            raise SystemUnavailable(f"could not start: {exc}") from exc
        except RuntimeError as exc:
            if str(exc).startswith(f"{self.name} exited with"):
                code = self.server.process.returncode
                raise SystemUnavailable(
                    f"exited with {code} at start-up: {self.last_error_line()}"
                ) from exc
            raise SystemUnavailable(str(exc)) from exc  # "model failed to load: ..."
        wait_idle(self.server.process.pid, timeout=self.startup_timeout)
        return time.perf_counter() - started

    def generate(self, messages: Messages, max_tokens: int) -> Sample:
        sample = stream_chat(self.url, self.model, messages, max_tokens)
        if sample.error and self.process is not None and self.process.poll() is not None:
            sample.error += f" (server exited: {self.last_error_line()})"
        return sample

    def switch(self, model: Path) -> float | None:
        """Name another model in the next requests; the server loads it on demand."""
        self.model = str(model)
        return None

    def server_load_seconds(self, model: Path) -> float | None:
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server = None

    def log_text(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def last_error_line(self) -> str:
        lines = [line for line in self.log_text().splitlines() if line.strip()]
        for line in reversed(lines):
            if "Error" in line or "error" in line or "Exception" in line:
                return line.strip()[:300]
        return lines[-1].strip()[:300] if lines else "(no output)"


class MlxhostSystem(HttpServerSystem):
    """``mlxhost serve``, with or without OpenBLAS and its post-load warm-up."""

    name = "mlxhost"
    engine = "mlx-lm (text) / mlx-vlm (vision)"

    def __init__(
        self, log_dir: Path, *, openblas: bool = True, warmup: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(log_dir, **kwargs)
        self.openblas = openblas
        self.warmup = warmup
        if not openblas:
            self.name = "mlxhost-no-openblas"
        elif not warmup:
            self.name = "mlxhost-no-warmup"

    def server_process(self, model: Path, port: int, **common: Any) -> ServerProcess:
        # ServerProcess runs `python -m mlxhost.cli.main serve --port PORT` + these, and
        # waits for /health to report the model loaded (a failed load: RuntimeError).
        # The swap benchmark names the other model by its folder: a loopback server
        # of our own, so serving folders by path is safe here.
        args = ["--model", str(model), "--host", "127.0.0.1", "--log-level", "info",
                "--allow-model-paths"]
        if not self.openblas:
            args.append("--no-openblas")
        return ServerProcess(args, port=port, **common)

    def env(self) -> dict[str, str]:
        # mlxhost preloads OpenBLAS itself (re-exec): give it the bare environment.
        env = base_env()
        if not self.openblas:
            env["MLXHOST_OPENBLAS"] = "0"
        # The post-load warm-up (a few tokens through the model) is on by default.
        env["MLXHOST_WARMUP"] = "1" if self.warmup else "0"
        return env

    def server_load_seconds(self, model: Path) -> float | None:
        """The last 'Model <model> ready in Xs' of the server log (unload + load)."""
        found = None
        for match in re.finditer(r"Model (\S+) ready in ([\d.]+)s", self.log_text()):
            if Path(match.group(1)) == Path(model):
                found = float(match.group(2))
        return found

    def server_warmup_seconds(self, model: Path) -> float | None:
        """The warm-up part of the last load of ``model`` (None: no warm-up ran)."""
        found = None
        pattern = r"Loaded (\S+) with \S+ in [\d.]+s \(\+([\d.]+)s warm-up\)"
        for match in re.finditer(pattern, self.log_text()):
            if Path(match.group(1)) == Path(model):
                found = float(match.group(2))
        return found


@dataclass(frozen=True)
class Peer:
    """Another MLX server, started as ``python -m MODULE --model M --host 127.0.0.1 --port P``."""

    module: tuple[str, ...]  # what follows ``python -m``
    engine: str
    # /health answers 200 before the model is loaded; with this key, ready once it is set.
    loaded_key: str | None = None
    # Its /v1/models scans the hub cache and fails when the folder is missing.
    needs_hub_cache: bool = False


PEERS = {
    "mlx-lm-server": Peer(module=("mlx_lm", "server"), engine="mlx-lm", needs_hub_cache=True),
    # (mlx_vlm.server listens on 0.0.0.0 unless told otherwise: --host matters.)
    "mlx-vlm-server": Peer(module=("mlx_vlm.server",), engine="mlx-vlm", loaded_key="loaded_model"),
}


class PeerServerSystem(HttpServerSystem):
    """One of ``PEERS`` on the same model folder, OpenBLAS preloaded as mlxhost does."""

    def __init__(self, log_dir: Path, name: str, **kwargs: Any) -> None:
        super().__init__(log_dir, **kwargs)
        self.name = name
        self.peer = PEERS[name]
        self.engine = self.peer.engine

    def server_process(self, model: Path, port: int, **common: Any) -> ServerProcess:
        command = [sys.executable, "-m", *self.peer.module, "--model", str(model)]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        return ServerProcess(command=command, port=port, ready=self.ready, **common)

    def ready(self, server: ServerProcess) -> bool:
        import httpx

        try:
            response = httpx.get(f"{server.url}/health", timeout=2)
            if response.status_code != 200:
                return False
            return self.peer.loaded_key is None or bool(response.json().get(self.peer.loaded_key))
        except (httpx.HTTPError, ValueError):
            return False

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.peer.needs_hub_cache:
            cache = Path(tempfile.gettempdir()) / "mlxhost-bench-hf-cache"
            cache.mkdir(exist_ok=True)
            env.setdefault("HF_HUB_CACHE", str(cache))
        return env


# --- the raw engine, in a worker process ---------------------------------------------

REPLY = "@@bench "


class RawEngineSystem:
    """``mlx_lm.stream_generate`` (or mlx-vlm's) called in-process, in a worker."""

    def __init__(
        self, log_dir: Path, *, engine: str = "lm", openblas: bool = True, timeout: float = 1800.0
    ) -> None:
        self.kind = engine
        self.name = f"raw-mlx-{engine}"
        self.engine = f"mlx-{engine}"
        self.openblas = openblas
        self.log_dir = log_dir
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.loads: dict[str, float] = {}
        self.extra_env: dict[str, str] = {}

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise SystemUnavailable(f"worker is gone: {exc}") from exc
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise SystemUnavailable(f"worker exited: {self._log_tail()}")
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
            return lines[-1][:300] if lines else "(no output)"
        return "(no log)"

    def start(self, model: Path) -> float:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}-{os.getpid()}-{int(time.time())}.log"
        root = Path(__file__).resolve().parent.parent
        env = blas_env(self.openblas)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        self._log = open(self.log_path, "w")  # noqa: SIM115 (lives as long as the worker)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.systems", "raw-worker", self.kind],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        started = time.perf_counter()
        load = self.switch(model)
        return time.perf_counter() - started if load is not None else 0.0

    def switch(self, model: Path) -> float | None:
        reply = self._call({"op": "load", "path": str(model)})
        if reply.get("error"):
            raise SystemUnavailable(f"load failed: {reply['error']}")
        self.loads[str(model)] = reply["load_s"]
        return reply["load_s"]

    def server_load_seconds(self, model: Path) -> float | None:
        return self.loads.get(str(model))

    def warmup(self, lengths: tuple[int, ...] = (32, 512), decode_steps: int = 2) -> float:
        """Run the proposed post-load warm-up in the worker; returns its seconds."""
        reply = self._call({"op": "warmup", "lengths": list(lengths), "decode_steps": decode_steps})
        if reply.get("error"):
            raise SystemUnavailable(f"warm-up failed: {reply['error']}")
        return reply["warmup_s"]

    def generate(self, messages: Messages, max_tokens: int) -> Sample:
        try:
            reply = self._call({"op": "generate", "messages": messages, "max_tokens": max_tokens})
        except SystemUnavailable as exc:
            return Sample(error=str(exc))
        if reply.get("error"):
            return Sample(error=reply["error"])
        return Sample(**reply["sample"])

    def stop(self) -> None:
        if self.process is not None:
            try:
                if self.process.stdin:
                    self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
            self.process = None
            self._log.close()


class _Worker:
    """The worker side: one model at a time, unloaded the way mlxhost unloads."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.model: Any = None
        self.tokenizer: Any = None
        self.processor: Any = None

    def load(self, path: str) -> dict[str, Any]:
        import gc

        import mlx.core as mx

        self.model = self.tokenizer = self.processor = None
        gc.collect()
        mx.clear_cache()
        started = time.perf_counter()
        if self.kind == "lm":
            import mlx_lm

            self.model, self.tokenizer = mlx_lm.load(path)
        else:
            import mlx_vlm

            self.model, self.processor = mlx_vlm.load(path)
            self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return {"load_s": time.perf_counter() - started}

    def warmup(self, lengths: list[int], decode_steps: int) -> dict[str, Any]:
        """A candidate post-load warm-up: dummy prompts of the given lengths through
        the same call as a request (token ids as a Python list, so the same int32
        prompt and uint32 sampled tokens; prefill, then ``decode_steps`` steps).

        Any one-time cost (CUDA kernel compilation and module loading, first-touch
        allocations) is paid here instead of by the first client request.
        """
        import mlx.core as mx
        import mlx_lm
        from mlx_lm.sample_utils import make_sampler

        started = time.perf_counter()
        for length in lengths:
            ids = [(i * 7919) % 1000 + 10 for i in range(length)]
            for _ in mlx_lm.stream_generate(
                self.model,
                self.tokenizer,
                ids,
                max_tokens=decode_steps,
                sampler=make_sampler(temp=0.0),
            ):
                pass
        mx.clear_cache()
        return {"warmup_s": time.perf_counter() - started}

    def generate(self, messages: Messages, max_tokens: int) -> dict[str, Any]:
        sample = Sample()
        pieces = []
        started = time.perf_counter()
        if self.kind == "lm":
            import mlx_lm
            from mlx_lm.sample_utils import make_sampler

            # As mlxhost does: render the template, then encode with no extra specials.
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            sample.prompt_tokens = len(ids)
            stream = mlx_lm.stream_generate(
                self.model,
                self.tokenizer,
                ids,
                max_tokens=max_tokens,
                sampler=make_sampler(temp=0.0),
            )
        else:
            import mlx_vlm
            from mlx_vlm.prompt_utils import apply_chat_template

            prompt = apply_chat_template(self.processor, self.model.config, messages)
            stream = mlx_vlm.stream_generate(
                self.model, self.processor, prompt, max_tokens=max_tokens, temperature=0.0
            )
        last = None
        for response in stream:
            now = time.perf_counter() - started
            if sample.t_first is None:
                sample.t_first = sample.ttft = now
            sample.t_last = now
            sample.chunks += 1
            pieces.append(response.text)
            last = response
        sample.total = time.perf_counter() - started
        sample.text = "".join(pieces)
        sample.completion_tokens = getattr(last, "generation_tokens", 0) or sample.chunks
        if self.kind != "lm" and last is not None:
            sample.prompt_tokens = getattr(last, "prompt_tokens", None)
        out = sample.to_dict()
        for key in ("decode_tps", "prefill_tps"):
            out.pop(key)
        return {"sample": out}


def raw_worker(kind: str) -> int:
    worker = _Worker(kind)
    out = sys.stdout
    # Libraries print to stdout; keep it for replies and send theirs to stderr.
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            if request["op"] == "load":
                reply = worker.load(request["path"])
            elif request["op"] == "warmup":
                reply = worker.warmup(request["lengths"], request["decode_steps"])
            elif request["op"] == "generate":
                reply = worker.generate(request["messages"], request["max_tokens"])
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:
            import traceback

            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(REPLY + json.dumps(reply) + "\n")
        out.flush()
    return 0


SYSTEMS = {
    "mlxhost": lambda log_dir: MlxhostSystem(log_dir),
    "raw-mlx-lm": lambda log_dir: RawEngineSystem(log_dir, engine="lm"),
    "raw-mlx-vlm": lambda log_dir: RawEngineSystem(log_dir, engine="vlm"),
    "mlx-lm-server": lambda log_dir: PeerServerSystem(log_dir, "mlx-lm-server"),
    "mlx-vlm-server": lambda log_dir: PeerServerSystem(log_dir, "mlx-vlm-server"),
    "mlxhost-no-openblas": lambda log_dir: MlxhostSystem(log_dir, openblas=False),
    "mlxhost-no-warmup": lambda log_dir: MlxhostSystem(log_dir, warmup=False),
}


def make_system(name: str, log_dir: Path):
    try:
        return SYSTEMS[name](log_dir)
    except KeyError:
        raise SystemExit(f"unknown system {name!r}; choose from {sorted(SYSTEMS)}") from None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "raw-worker":
        raise SystemExit(raw_worker(sys.argv[2]))
    raise SystemExit("usage: python -m bench.systems raw-worker {lm,vlm}")
