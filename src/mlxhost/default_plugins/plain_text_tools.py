"""Fallback tool-call parser: every generated character is content."""

from __future__ import annotations

from collections.abc import Sequence

from mlxhost.domain import FunctionTool
from mlxhost.hookspecs import hookimpl
from mlxhost.toolcalls import ContentOnlyParser
from mlxhost.types import ModelInfo, StreamParser, ToolParserFactory


def plain_text_parser(tools: Sequence[FunctionTool]) -> StreamParser:
    return ContentOnlyParser()


@hookimpl(trylast=True)
def mlxhost_tool_call_parser(model: ModelInfo) -> ToolParserFactory | None:
    return plain_text_parser
