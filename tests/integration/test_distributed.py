"""`mlxhost serve --ranks 2`: one model over two local processes (ring backend over
loopback, tensor parallel), against the real test models.

One 2-rank server serves the chat, streaming, tools, swap and identity tests, and
last its follower is killed halfway through a request. Both ranks get one BLAS
thread (``--ranks`` shares the cores out), so this runs on CI's 2 cores.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.http import parse_sse, streamed_text
from mlxhost.testing.live import wait_until
from mlxhost.testing.tools import QUESTION, WEATHER_TOOL
from mlxhost.testing.vlm_models import TINY_VLMS

QWEN = TEST_MODELS["qwen"].repo_id
GEMMA = TEST_MODELS["gemma"].repo_id
VLM = TINY_VLMS["gemma3"]  # its text tower split by the Gemma plugin, the vision tower whole
PROMPTS = [
    "What is 2+2?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Say hello in French.",
    "Name a prime number.",
]
TOKENS = 16


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def group_server(start_server):
    with start_server("--ranks", "2", "--model", QWEN, "--no-warmup") as server:
        yield server


def chat(url: str, model: str, content: str | list, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def greedy_replies(url: str, prompts: list[str] = PROMPTS) -> list[str]:
    """The prompts at once (they decode in one batch), greedy, TOKENS each."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = pool.map(
            lambda p: chat(url, QWEN, p, temperature=0, max_tokens=TOKENS), prompts
        )
        return [r["choices"][0]["message"]["content"] for r in replies]


def test_rank_zero_serves_and_the_group_is_tensor_parallel(group_server):
    health = group_server.health()
    assert health["status"] == "ok"
    assert health["distributed"] == {
        "ranks": 2, "backend": "ring", "mode": "tensor",
        "sharding": "tensor parallel (mlx-lm)", "lost": None,
    }
    # Only rank 0 listens: its follower opened no TCP port.
    (follower,) = children(group_server.process.pid)
    listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    inodes = {line.split()[9] for line in listening.splitlines()[1:] if line.split()[3] == "0A"}
    follower_sockets = {
        os.readlink(f"/proc/{follower}/fd/{fd}")[8:-1]
        for fd in os.listdir(f"/proc/{follower}/fd")
        if os.readlink(f"/proc/{follower}/fd/{fd}").startswith("socket:")
    }
    assert not inodes & follower_sockets


def test_greedy_replies_match_a_single_process_server(group_server, qwen_server):
    grouped = greedy_replies(group_server.url)
    single = greedy_replies(qwen_server.url)
    assert all(grouped) and grouped == single


def test_streaming(group_server):
    body = {
        "model": QWEN, "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8, "temperature": 0, "stream": True,
    }
    with httpx.stream("POST", f"{group_server.url}/v1/chat/completions", json=body, timeout=300) as r:
        events = parse_sse(r.read().decode())
    assert events[-1] == "[DONE]" and streamed_text(events).strip()


def test_required_tool_call(group_server):
    body = {
        "model": QWEN, "messages": QUESTION, "tools": [WEATHER_TOOL],
        "tool_choice": "required", "temperature": 0, "max_tokens": 40,
    }
    response = httpx.post(f"{group_server.url}/v1/chat/completions", json=body, timeout=300)
    (call,) = response.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert "Paris" in call["function"]["arguments"]


def test_swap_to_gemma_sharded_by_its_plugin(group_server):
    reply = chat(group_server.url, GEMMA, "Hello", temperature=0, max_tokens=6)
    assert reply["choices"][0]["message"]["content"]
    health = group_server.health()
    assert health["model"] == GEMMA and health["swaps"] >= 1
    assert health["distributed"]["sharding"] == "tensor parallel (plugin)"


def square(color: tuple[int, int, int]) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def first_token(url: str, image: str) -> tuple[dict, dict]:
    """(usage, the first position's logprobs entry) of an image prompt, greedy."""
    content = [
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": image}},
    ]
    reply = chat(url, VLM, content, temperature=0, max_tokens=2, logprobs=True, top_logprobs=5)
    return reply["usage"], reply["choices"][0]["logprobs"]["content"][0]


def test_an_image_prompt_matches_a_single_process_server(group_server, qwen_server):
    """The tiny VLM has random weights: its logits are nearly flat, so greedy text
    soon parts ways where the split's sums round differently (measured: after 3
    tokens). The first position's distribution is compared instead."""
    red = square((220, 30, 30))
    (grouped_usage, grouped), (single_usage, single) = (
        first_token(server.url, red) for server in (group_server, qwen_server)
    )
    assert grouped_usage == single_usage  # the image expanded to the same tokens
    assert grouped["token"] == single["token"]
    assert abs(grouped["logprob"] - single["logprob"]) < 1e-3, (grouped, single)
    assert group_server.health()["distributed"]["sharding"] == "tensor parallel (plugin)"
    # The image reaches the sharded text tower: another image, another distribution.
    _, blue = first_token(group_server.url, square((30, 30, 220)))
    assert blue["top_logprobs"] != grouped["top_logprobs"]


def test_a_killed_follower_fails_the_request_with_503_and_ends_the_group(group_server):
    """Last in this module: it ends the shared server."""
    server = group_server
    (follower,) = children(server.process.pid)
    answers: list[httpx.Response] = []
    asking = threading.Thread(
        target=lambda: answers.append(httpx.post(
            f"{server.url}/v1/chat/completions", timeout=300,
            json={"model": GEMMA, "messages": [{"role": "user", "content": "Count to 100"}],
                  "max_tokens": 400, "temperature": 0},
        ))
    )
    asking.start()
    wait_until(lambda: server.health()["running"] == 1, timeout=120, what="the request running")
    os.kill(follower, signal.SIGKILL)
    asking.join(timeout=120)
    assert answers and answers[0].status_code == 503
    assert answers[0].json()["error"]["code"] == "distributed_group_lost"
    # Rank 0 leaves by itself, non-zero, and no rank is left behind.
    assert server.process.wait(timeout=120) == 3
    wait_until(lambda: not alive(follower), timeout=30, what="the follower gone")


@pytest.fixture(scope="module")
def pipeline_server(start_server):
    with start_server("--ranks", "2", "--pipeline", "--model", QWEN, "--no-warmup") as server:
        yield server


def test_pipeline_parallel_matches_a_single_process_server(pipeline_server, qwen_server):
    grouped = greedy_replies(pipeline_server.url, PROMPTS[:3])  # the batch path; 5 above
    assert pipeline_server.health()["distributed"] == {
        "ranks": 2, "backend": "ring", "mode": "pipeline",
        "sharding": "pipeline (mlx-lm)", "lost": None,
    }
    assert all(grouped) and grouped == greedy_replies(qwen_server.url, PROMPTS[:3])


def test_pipeline_refuses_a_model_it_cannot_split_and_stays_up(pipeline_server):
    body = {"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    response = httpx.post(f"{pipeline_server.url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_shardable" and "gemma3_text" in error["message"]
    reply = chat(pipeline_server.url, QWEN, "Say hi", temperature=0, max_tokens=4)
    assert reply["choices"][0]["message"]["content"]


def test_a_hung_follower_fails_the_request_with_503_and_ends_the_group(pipeline_server):
    """A follower that stops answering (SIGSTOP: alive, silent) is found by its
    missing heartbeats; last in this module: it ends the pipeline server."""
    server = pipeline_server
    (follower,) = children(server.process.pid)
    os.kill(follower, signal.SIGSTOP)
    try:
        body = {"model": QWEN, "messages": [{"role": "user", "content": "Count to 50"}],
                "max_tokens": 100, "temperature": 0}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "distributed_group_lost" and "no heartbeat" in error["message"], error
        assert server.process.wait(timeout=60) == 3
        wait_until(lambda: not alive(follower), timeout=30, what="the stopped follower ended")
    finally:
        if alive(follower):
            os.kill(follower, signal.SIGKILL)
