"""``mlxhost run MODEL [PROMPT]``: chat with a model in the terminal.

Talks to the server at ``--url`` (default: the configured address) through
``/v1/chat/completions``, streaming the answer as it is generated. When nothing
answers there (and the address is this machine's), a server starts inside this
process for the session and stops with it.

With PROMPT (or text piped on stdin, appended to PROMPT when both) it prints
one answer and exits: only the answer goes to stdout, so
``mlxhost run qwen "Summarize:" < notes.txt > summary.txt`` works.
Without, it is an interactive chat: ``/image PATH`` attaches an image to the next
message, ``/reset`` starts over, ``/exit`` (or Ctrl-D) leaves; a line of three
double quotes starts and ends a multi-line message, and a line ending in a
backslash continues on the next. Ctrl-C stops an answer.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlxhost.cli.common import (
    CommandError,
    add_config_argument,
    add_url_argument,
    auth_headers,
    get_health,
    load_settings,
    server_url,
)

HELP = """Commands:
  /image PATH   attach an image to your next message (vision models)
  /reset        forget the conversation and start over
  /exit         leave (also /bye, Ctrl-D)
  /help         this text
A line of three double quotes (\"\"\") starts a multi-line message and another ends it;
a line ending with a backslash continues on the next. Ctrl-C stops an answer."""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "run", help="chat with a model in the terminal (or answer one PROMPT)",
        description="Chat with a model through a running server (one starts in this "
        "process if none answers). With PROMPT, print one answer and exit.",
    )
    parser.add_argument("model", help="model id or alias")
    parser.add_argument("prompt", nargs="?", help="answer this and exit (also: text piped on stdin)")
    add_url_argument(parser)
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="attach an image to PROMPT (repeatable)")
    parser.add_argument("--system", metavar="TEXT", help="a system message for the conversation")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="cap each answer at N tokens")
    parser.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    parser.add_argument("--seed", type=int, metavar="N", help="sampling seed")
    parser.add_argument("--verbose", action="store_true",
                        help="print token counts and speed after each answer (on stderr)")
    add_config_argument(parser)
    parser.set_defaults(func=run)


# -- talking to the server ---------------------------------------------------------
class Chat:
    """One conversation with one model over ``/v1/chat/completions`` (streaming)."""

    def __init__(self, url: str, model: str, headers: dict[str, str], options: dict[str, Any],
                 system: str | None = None) -> None:
        self.url = url
        self.model = model
        self.headers = headers
        self.options = options
        self.system = system
        self.messages: list[dict[str, Any]] = []
        self.usage: dict[str, int] | None = None
        self.seconds = 0.0

    def reset(self) -> None:
        self.messages = []

    def ask(self, text: str, images: Sequence[str] = ()) -> Iterator[str]:
        """Stream the answer to ``text`` (with images as data URLs); the exchange is
        kept only when an answer came (a stopped answer keeps what it said)."""
        content: Any = text
        if images:
            content = [{"type": "text", "text": text}]
            content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
        self.messages.append({"role": "user", "content": content})
        answer: list[str] = []
        try:
            for piece in self._stream():
                if not isinstance(piece, Thought):  # thinking stays out of the history
                    answer.append(piece)
                yield piece
        except BaseException:
            if answer:
                self.messages.append({"role": "assistant", "content": "".join(answer)})
            else:
                self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": "".join(answer)})

    def _stream(self) -> Iterator[str]:
        import httpx

        system = [{"role": "system", "content": self.system}] if self.system else []
        body = {
            "model": self.model,
            "messages": system + self.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.options,
        }
        self.usage = None
        started = time.perf_counter()
        try:
            with httpx.stream(
                "POST", f"{self.url}/v1/chat/completions", json=body, headers=self.headers,
                timeout=httpx.Timeout(10.0, read=None),
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise CommandError(_error_message(response))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise CommandError(chunk["error"].get("message", "generation failed"))
                    if chunk.get("usage"):
                        self.usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("reasoning_content"):
                            yield Thought(delta["reasoning_content"])
                        if delta.get("content"):
                            yield delta["content"]
                        for call in delta.get("tool_calls") or []:
                            function = call.get("function") or {}
                            if function.get("name"):
                                yield f"[tool call {function['name']}] "
                            if function.get("arguments"):
                                yield function["arguments"]
        except httpx.HTTPError as error:
            raise CommandError(f"the server at {self.url} failed: {error}") from None
        finally:
            self.seconds = time.perf_counter() - started


class Thought(str):
    """A piece of the model's thinking (shown dimmed, never sent back)."""


DIM, UNDIM = "\x1b[2m", "\x1b[22m"


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    if isinstance(error, dict) and error.get("message"):
        return f"{error['message']} ({response.status_code})"
    return f"the server answered {response.status_code}: {response.text[:200]}"


def image_data_url(path_text: str) -> str:
    path = Path(path_text.strip().strip("'\"")).expanduser()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror or error}") from None
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    if not kind.startswith("image/"):
        raise CommandError(f"{path} does not look like an image ({kind})")
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


# -- a server for the session -----------------------------------------------------------
class SessionServer:
    """``mlxhost serve`` inside this process (a thread), for one ``run`` session."""

    def __init__(self, settings: Any, model: str) -> None:
        self.settings = settings
        self.model = model
        self.url = server_url(settings)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 900.0) -> None:
        import logging

        import attrs
        import uvicorn

        from mlxhost.api.app import create_app
        from mlxhost.cli.lean_imports import hide_torch

        hide_torch()
        if self.settings.ranks > 1 or self.settings.hostfile is not None:
            raise CommandError(
                "the server `run` starts is one process: for --ranks / --hostfile start "
                "`mlxhost serve` with them and point `run --url` at it"
            )
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        app = create_app(attrs.evolve(self.settings, model=self.model))
        config = uvicorn.Config(app, host=self.settings.host, port=self.settings.port,
                                log_level="warning", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="mlxhost-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise CommandError(f"could not start a server at {self.url} (is the port in use?)")
            health = get_health(self.url, timeout=2)
            if health and health.get("ready"):  # loaded and warm
                return
            if health and health.get("last_error") and health.get("status") == "ok":
                raise CommandError(f"could not load {self.model}: {health['last_error']}")
            time.sleep(0.2)
        raise CommandError(f"the server at {self.url} did not load {self.model} in time")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)


def _check_model(settings: Any, model: str) -> None:
    """Fail fast, before a server starts, on a model that cannot be loaded here."""
    from mlxhost.core.errors import ModelNotFound
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.models.registry import ModelRegistry

    registry = ModelRegistry(make_plugin_manager(disabled=settings.disabled_plugins), settings,
                             extra_models=[model])
    try:
        info = registry.resolve(model)
    except ModelNotFound:
        raise CommandError(f"no model named {model} (see mlxhost ls)") from None
    if not info.downloaded:
        raise CommandError(f"{info.id} is not downloaded; get it with: mlxhost pull {model}")


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0")


# -- the two modes ------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    url = server_url(settings, args.url)
    prompt = args.prompt
    if not sys.stdin.isatty():  # piped text: the prompt, or appended to PROMPT
        piped = sys.stdin.read()
        if prompt is None and not piped.strip():
            raise CommandError("no prompt: stdin was empty")
        if piped.strip():
            prompt = piped if prompt is None else f"{prompt}\n\n{piped}"
    images = [image_data_url(path) for path in args.image]
    if images and prompt is None:
        raise CommandError("--image goes with a PROMPT; in the chat use /image PATH")
    server = None
    if get_health(url) is None:
        if not _is_local(url):
            raise CommandError(f"no mlxhost server answers at {url}")
        _check_model(settings, args.model)
        from mlxhost.cli.blas import reexec_with_openblas

        # This process will run MLX: on Linux CPU, with OpenBLAS (re-executes once).
        reexec_with_openblas(enabled=settings.openblas, path=settings.openblas_path)
        import attrs

        split = urlsplit(url)
        local = attrs.evolve(settings, host=split.hostname or "127.0.0.1",
                             port=split.port or settings.port)
        server = SessionServer(local, args.model)
        print(f"No server at {url}: starting one for this session with {args.model} "
              "(it stops when you leave)...", file=sys.stderr, flush=True)
        server.start()
    options = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature),
                                 ("seed", args.seed)) if v is not None}
    chat = Chat(url, args.model, auth_headers(settings), options, system=args.system)
    try:
        if prompt is not None:
            return _one_answer(chat, prompt, images, args.verbose)
        return _interactive(chat, args.verbose)
    finally:
        if server is not None:
            server.stop()


def _print_stats(chat: Chat) -> None:
    usage = chat.usage
    if usage:
        rate = usage["completion_tokens"] / chat.seconds if chat.seconds > 0 else 0.0
        print(f"[{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens, "
              f"{chat.seconds:.1f}s, {rate:.1f} tok/s]", file=sys.stderr, flush=True)


def _one_answer(chat: Chat, prompt: str, images: list[str], verbose: bool) -> int:
    ended_with_newline = True
    dim = sys.stdout.isatty()
    thinking = False
    for piece in chat.ask(prompt, images):
        if isinstance(piece, Thought) != thinking:
            thinking = not thinking
            if dim:
                sys.stdout.write(DIM if thinking else UNDIM)
            if not thinking:
                sys.stdout.write("\n")  # the answer starts on its own line
        sys.stdout.write(piece)
        sys.stdout.flush()
        if piece:
            ended_with_newline = piece.endswith("\n")
    if thinking and dim:
        sys.stdout.write(UNDIM)
    if not ended_with_newline:
        sys.stdout.write("\n")
    sys.stdout.flush()
    if verbose:
        _print_stats(chat)
    return 0


def read_message(read: Any = input) -> str:
    """One message from the terminal: a line, a \"\"\"-delimited block, or lines joined
    by trailing backslashes. EOFError at the end of input."""
    line = read(">>> ")
    if line.lstrip().startswith('"""'):
        first = line.lstrip()[3:]
        if first.rstrip().endswith('"""'):  # """all on one line"""
            return first.rstrip()[:-3]
        lines = [first]
        while True:
            more = read("... ")
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                return "\n".join(lines).strip("\n")
            lines.append(more)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read("... ")
    lines.append(line)
    return "\n".join(lines)


def _interactive(chat: Chat, verbose: bool) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print(f"Chatting with {chat.model} at {chat.url}. /help for commands, /exit to leave.",
          file=sys.stderr, flush=True)
    images: list[str] = []
    while True:
        try:
            text = read_message()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(use /exit or Ctrl-D to leave)", file=sys.stderr, flush=True)
            continue
        if not text.strip():
            continue
        if text.startswith("/"):
            command, _, argument = text.strip().partition(" ")
            if command in ("/exit", "/bye", "/quit"):
                return 0
            if command in ("/reset", "/clear"):
                chat.reset()
                images.clear()
                print("(conversation cleared)", file=sys.stderr, flush=True)
            elif command == "/image":
                if not argument.strip():
                    print("usage: /image PATH", file=sys.stderr, flush=True)
                    continue
                try:
                    images.append(image_data_url(argument))
                except CommandError as error:
                    print(f"error: {error}", file=sys.stderr, flush=True)
                    continue
                print(f"(attached {argument.strip()}: it goes with your next message)",
                      file=sys.stderr, flush=True)
            elif command in ("/help", "/?"):
                print(HELP, file=sys.stderr, flush=True)
            else:
                print(f"unknown command {command} (/help lists them)", file=sys.stderr, flush=True)
            continue
        attached, images = images, []
        answered = ""
        try:
            for piece in chat.ask(text, attached):
                answered += piece
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n(stopped)", file=sys.stderr, flush=True)
            continue
        except CommandError as error:
            if answered:
                print()
            print(f"error: {error}", file=sys.stderr, flush=True)
            continue
        if not answered.endswith("\n"):
            print(flush=True)
        if verbose:
            _print_stats(chat)
