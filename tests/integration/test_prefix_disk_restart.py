"""The prefix cache's disk tier across a real restart of ``mlxhost serve``.

A long prompt fills the cache; SIGTERM shuts the server down gracefully, which
unloads the model and writes its cache entries to ``--prefix-cache-dir``. A new
server on the same folder answers the same prompt from disk (its log and
``/health`` say so) with the same greedy reply as the cold first server.
"""

from __future__ import annotations

from pathlib import Path

from mlxhost.models.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id
# The fast model for one server; a group splits Qwen (SmolLM2's 9 attention heads
# do not split in two for tensor parallelism).
SMOL = TEST_MODELS["smollm2"].repo_id

# ~300 prompt tokens with the chat template: a few seconds of cold prefill on 2 cores.
FACTS = " ".join(
    f"Crate {n} on the pier holds {n * 7 % 23 + 2} barrels of {word} and leaves on day {n % 5 + 1}."
    for n, word in enumerate(["salt", "tar", "rope", "oil", "grain", "wool", "tin", "cloth"] * 2)
)
MESSAGES = [
    {"role": "system", "content": "You are the harbour master's clerk. Answer briefly."},
    {"role": "user", "content": f"{FACTS}\nWhich crate leaves first, and what does it hold?"},
]


def ask(server, messages: list[dict] = MESSAGES, model: str = QWEN) -> tuple[str, int]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=8  # type: ignore[arg-type]
    )
    assert reply.usage is not None
    return reply.choices[0].message.content or "", reply.usage.prompt_tokens


def test_restarted_server_serves_the_long_prompt_from_disk(start_server, tmp_path):
    folder = tmp_path / "prefix"
    args = ("--model", SMOL, "--prefix-cache-dir", str(folder))

    first = start_server(*args)
    with first:
        cold_reply, prompt_tokens = ask(first, model=SMOL)
        assert prompt_tokens >= 250
        assert first.health()["prefix_cache"]["disk"]["hits"] == 0
    assert first.process is not None and first.process.returncode == 0  # a graceful shutdown
    assert list(folder.rglob("*.safetensors")), first.log_tail()  # spilled at shutdown

    second = start_server(*args)
    with second:
        assert second.log_path is not None
        assert "Prefix cache on disk: 1 entries for" in Path(second.log_path).read_text()
        reply, _ = ask(second, model=SMOL)
        disk = second.health()["prefix_cache"]["disk"]
        log = Path(second.log_path).read_text()
    assert reply == cold_reply  # token-identical to the cold prefill
    assert disk["hits"] == 1 and disk["tokens_reused"] == prompt_tokens - 1, disk
    assert f"Prefix cache: {prompt_tokens - 1} prompt tokens loaded from disk" in log, log[-3000:]


def test_a_restarted_group_agrees_on_what_its_ranks_found_on_disk(start_server, tmp_path):
    """``--ranks 2``: each rank keeps its KV slice in DIR/rank-N. Both ranks must
    prefill the same tokens, so a prefix one rank lost is not used by any."""
    folder = tmp_path / "prefix"
    args = ("--ranks", "2", "--model", QWEN, "--no-warmup", "--prefix-cache-dir", str(folder))
    # Half the facts: ~170 prompt tokens keep the long entry the larger file
    # and halve the group's cold prefills.
    half = FACTS[: len(FACTS) // 2].rsplit(".", 1)[0] + "."
    long = [MESSAGES[0], {"role": "user", "content": f"{half}\nWhich crate leaves first?"}]
    short = [MESSAGES[0], {"role": "user", "content": "Which crate holds tin?"}]

    first = start_server(*args)
    with first:
        cold_reply, prompt_tokens = ask(first, long)
        cold_short, short_tokens = ask(first, short)
    assert first.process is not None and first.process.returncode == 0
    rank0, rank1 = (sorted((folder / f"rank-{n}").rglob("*.safetensors")) for n in (0, 1))
    assert len(rank0) == len(rank1) == 2, first.log_tail()
    # Rank 1 loses the long prompt's entry (the larger file); rank 0 keeps it.
    max(rank1, key=lambda f: f.stat().st_size).unlink()

    second = start_server(*args)
    with second:
        assert ask(second, short) == (cold_short, short_tokens)  # both ranks load it
        disk = second.health()["prefix_cache"]["disk"]
        assert disk["hits"] == 1 and disk["tokens_reused"] == short_tokens - 1, disk
        assert ask(second, long) == (cold_reply, prompt_tokens)  # rank 0's entry goes unused
        assert second.log_path is not None
        log = Path(second.log_path).read_text()
    assert f"Prefix cache: {prompt_tokens - 1} tokens reused on rank 0, " in log, log[-3000:]
