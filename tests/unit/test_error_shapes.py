"""Each API's error shape is chosen by path prefix, from the shapes the app lists."""

from mlxhost.api.errors import ApiError, ErrorShapes, openai_error_body


def _named(name):
    return lambda error: {"shape": name, "message": error.message}


def test_longest_prefix_wins_and_openai_is_the_default():
    shapes = ErrorShapes((("/api", _named("ollama")), ("/api/chat", _named("chat"))))
    error = ApiError(400, "bad", "invalid_request_error")
    assert shapes.for_path("/api/tags")(error)["shape"] == "ollama"
    assert shapes.for_path("/api/chat")(error)["shape"] == "chat"
    assert shapes.for_path("/api")(error)["shape"] == "ollama"
    assert shapes.for_path("/apix") is openai_error_body
    assert shapes.for_path("/v1/chat/completions") is openai_error_body


def test_no_shape_is_registered_by_importing_an_adapter():
    from mlxhost.api.formats import anthropic, ollama  # noqa: F401

    assert ErrorShapes().for_path("/v1/messages") is openai_error_body
