"""Fallback tool-call parser: every generated character is content."""

from __future__ import annotations

from typing import Any

from mlxhost.hookspecs import hookimpl
from mlxhost.types import ContentDelta, ModelInfo, ParserEvent, ToolParserFactory


class PlainTextParser:
    def feed(self, text: str) -> list[ParserEvent]:
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[ParserEvent]:
        return []


def plain_text_parser(tools: list[dict[str, Any]]) -> PlainTextParser:
    return PlainTextParser()


@hookimpl(trylast=True)
def mlxhost_tool_call_parser(model: ModelInfo) -> ToolParserFactory | None:
    return plain_text_parser
