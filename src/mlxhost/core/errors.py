"""Domain errors. Each maps to an OpenAI-shaped error body in `api.errors`."""

from __future__ import annotations

from mlxhost.core.units import format_bytes


def error_type_of(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status: the request's fault or the server's."""
    return "invalid_request_error" if status < 500 else "server_error"


class MlxhostError(Exception):
    """Base error: carries the HTTP status and OpenAI error fields."""

    status_code = 500
    code: str | None = None
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def error_type(self) -> str:
        return error_type_of(self.status_code)

    def to_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(MlxhostError):
    status_code = 400


class ModelNotFound(MlxhostError):
    status_code = 404
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(
            f"The model '{model}' does not exist or is not available. "
            "GET /v1/models lists the models this server can load.",
            param="model",
        )


class UnsupportedArchitecture(MlxhostError):
    """A model whose ``model_type`` neither mlx-lm nor mlx-vlm can load."""

    status_code = 400
    code = "unsupported_architecture"

    def __init__(self, model: str, model_type: object):
        super().__init__(
            f"The model '{model}' has model_type {model_type!r}, an architecture neither "
            "mlx-lm nor mlx-vlm can load (nor any installed mlxhost plugin).",
            param="model",
        )


class ModelNotDownloaded(MlxhostError):
    """A known model whose weights are not on this machine and cannot be fetched now."""

    status_code = 404
    code = "model_not_downloaded"

    def __init__(self, model: str, reason: str, available: list[str]):
        listed = ", ".join(available) if available else "none"
        super().__init__(
            f"The model '{model}' is not in the local Hugging Face cache and {reason}. "
            f"Models available offline: {listed}.",
            param="model",
        )


class ModelDownloadFailed(MlxhostError):
    """The hub was reachable but the download did not complete."""

    status_code = 503
    code = "model_download_failed"

    def __init__(self, model: str, detail: str):
        super().__init__(
            f"The model '{model}' is not in the local cache and downloading it failed: {detail}. "
            "Retry later.",
            param="model",
        )
        self.headers = {"Retry-After": "30"}


class ModelLoadFailed(MlxhostError):
    """The model was found but could not be loaded (missing files, bad weights, no memory)."""

    status_code = 500
    code = "model_load_failed"


class ContextLengthExceeded(MlxhostError):
    """The request does not fit the context window, in one of two ways each API
    words differently (clients act on the difference: Claude Code retries the
    second with a smaller ``max_tokens``):

    - the prompt alone does not fit (``prompt_alone``), or leaves less than the
      reply room reserved when the request sets no ``max_tokens``;
    - the prompt fits, but prompt + ``max_tokens`` does not.

    The message is OpenAI's wording; other APIs phrase it from the numbers.
    """

    status_code = 400
    code = "context_length_exceeded"

    def __init__(
        self,
        limit: int,
        prompt_tokens: int,
        *,
        max_tokens: int | None = None,
        reserved: int = 0,
    ):
        self.limit = limit
        self.prompt_tokens = prompt_tokens
        # The completion tokens the request asked for (None: it set no max_tokens).
        self.max_tokens = max_tokens
        # Without max_tokens: the reply room the server keeps free.
        self.reserved = reserved
        if self.prompt_alone:
            message = (
                f"This model's maximum context length is {limit} tokens. However, your "
                f"messages resulted in {prompt_tokens} tokens"
                + (f", leaving fewer than the {reserved} tokens this server keeps for the "
                   "completion when max_tokens is not set" if prompt_tokens <= limit else "")
                + ". Please reduce the length of the messages."
            )
            param = "messages"
        else:
            message = (
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{self.tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
            param = "max_tokens"
        super().__init__(message, param=param)

    @property
    def prompt_alone(self) -> bool:
        """The prompt does not fit even with the smallest reply the request allows."""
        return self.max_tokens is None or self.prompt_tokens > self.limit

    @property
    def tokens(self) -> int:
        """Prompt + the requested completion."""
        return self.prompt_tokens + (self.max_tokens or 0)


class MemoryExceeded(MlxhostError):
    """A request whose KV cache cannot fit in the memory budget even alone
    (distinct from the context window: the model could take that many tokens,
    this machine cannot hold them)."""

    status_code = 400
    code = "memory_exceeded"

    def __init__(
        self,
        *,
        tokens: int,
        prompt_tokens: int,
        max_tokens: int | None,
        fitting: int,
        needed: int,
        budget: int,
        weights: int,
        workspace: int = 0,
    ):
        asked = (
            f"{prompt_tokens} prompt tokens + max_tokens {max_tokens}"
            if max_tokens is not None
            else f"{prompt_tokens} prompt tokens"
        )
        super().__init__(
            f"This request does not fit in memory: {tokens} tokens ({asked}) need "
            f"{format_bytes(needed)} of KV cache, but the memory budget of "
            f"{format_bytes(budget)} (--max-memory) less the model's weights "
            f"({format_bytes(weights)}) and working memory ({format_bytes(workspace)}) holds "
            f"at most {fitting} tokens. This is a memory "
            "limit of this server, not the model's context window: send at most "
            f"{fitting} tokens in all (a shorter prompt or a lower max_tokens).",
            param="max_tokens" if max_tokens is not None else "messages",
        )
        self.tokens = tokens
        self.fitting = fitting


class SideModelTooLarge(MlxhostError):
    """An embedding or rerank model that cannot fit beside the loaded models in the
    memory budget, even with no request running."""

    status_code = 400
    code = "memory_exceeded"

    def __init__(self, model: str, needed: int, room: int, budget: int, loaded: int):
        super().__init__(
            f"The model '{model}' needs {format_bytes(needed)} of memory, but the memory budget "
            f"of {format_bytes(budget)} (--max-memory) less the loaded models "
            f"({format_bytes(loaded)} and their working memory) leaves {format_bytes(room)}. "
            "Raise --max-memory or use a smaller model.",
            param="model",
        )


class EngineError(MlxhostError):
    """Generation failed inside the MLX worker."""

    status_code = 500
    code = "engine_error"


class Busy(MlxhostError):
    status_code = 503
    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class ClientDisconnected(Exception):
    """The client went away before its response was ready; nothing to send."""


class GroupLost(MlxhostError):
    """A rank of the distributed group died or hung: rank 0 cannot generate any more."""

    status_code = 503
    code = "distributed_group_lost"

    def __init__(self, reason: str):
        super().__init__(
            f"The distributed group serving this model lost a rank ({reason}); "
            "the server is shutting down."
        )
        self.reason = reason
