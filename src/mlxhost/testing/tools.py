"""A tool and a question that calls it, shared by the tool-calling integration tests."""

from __future__ import annotations

from typing import Any

# OpenAI chat-completions shape.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]
