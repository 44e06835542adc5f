"""Rules every test file follows (issue #11): no test imports helpers from another
test module or a conftest (shared helpers live in ``mlxhost.testing``, shared
fixtures in conftest files, found by pytest), and no test sleeps for a fixed time
(wait on an event, or poll a condition with ``mlxhost.testing.live.wait_until``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLEEPS = {"sleep"}  # time.sleep, asyncio.sleep, anyio.sleep, trio.sleep, a bare sleep
# (path relative to the repo root, line) -> why a fixed sleep is the right tool there.
SLEEP_EXEMPTIONS: dict[tuple[str, int], str] = {}


def collect_test_files() -> list[Path]:
    files = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]
    return sorted(p for p in files if ".venv" not in p.parts)


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" or any(p == "conftest" or p.startswith("test_") for p in parts)


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0:
                found.append(f"{node.lineno}: relative import 'from {'.' * node.level}{module}'")
            elif is_test_module(module):
                found.append(f"{node.lineno}: imports from test module {module!r}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if is_test_module(alias.name):
                    found.append(f"{node.lineno}: imports test module {alias.name!r}")
        elif isinstance(node, ast.Call) and _is_fixed_sleep(node):
            found.append(f"{node.lineno}: fixed sleep {ast.unparse(node)}")
    return found


def _is_fixed_sleep(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in SLEEPS or not call.args:
        return False
    arg = call.args[0]
    if isinstance(arg, ast.UnaryOp) and isinstance(arg.operand, ast.Constant):
        arg = arg.operand
    # sleep(0) only yields to other tasks; any other literal is a wait on the clock.
    return isinstance(arg, ast.Constant) and isinstance(arg.value, (int, float)) and arg.value != 0


@pytest.mark.parametrize("path", collect_test_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_cross_test_imports_and_no_fixed_sleeps(path):
    rel = str(path.relative_to(ROOT))
    problems = [
        v
        for v in violations(path)
        if "fixed sleep" not in v or (rel, int(v.split(":")[0])) not in SLEEP_EXEMPTIONS
    ]
    assert not problems, f"{rel}:\n" + "\n".join(problems)


def test_the_checker_catches_what_it_should(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import time, asyncio\n"
        "from .conftest import QWEN\n"
        "from tests.unit.test_chat_api import chat\n"
        "from . import helpers\n"
        "import tests.unit.test_x\n"
        "from mlxhost.testing.http import chat\n"  # fine
        "time.sleep(0.5)\n"
        "asyncio.sleep(0)\n"  # fine: yields to other tasks
        "await_me = asyncio.sleep(1)\n"
    )
    lines = sorted(int(v.split(":")[0]) for v in violations(sample))
    assert lines == [2, 3, 4, 5, 7, 9]
