"""Prefix-cache hit rate of a 10-turn tool-using chat when the template re-renders
the replies (tokenizer only, no model).

The model's raw output for a tool call (``<tool_call>\\n{...}\\n</tool_call>``, its
own spacing) is what the cache holds after a turn; the next request renders
that call again from its parsed form through the chat template, which may
space or order it differently. The prefix cache then serves the longest common
token prefix (plain KV caches are cut back to it; ``PrefixCache._nearest``).
This measures that share per turn on the Qwen 0.5B test model's template:
reused = common prefix of (previous prompt + generated tokens) and the next
prompt, at most all but its last token.

    python -m bench.prefix_rerender
"""

from __future__ import annotations

import json

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the project",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]
FILES = ["src/app.py", "src/db.py", "README.md", "tests/test_app.py", "setup.cfg"]


def common(a: list[int], b: list[int]) -> int:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def main() -> int:
    from transformers import AutoTokenizer

    from mlxhost.models.starter.builder import ensure_test_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_test_model("qwen")))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def render(messages: list[dict]) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special_tokens=False))

    messages: list[dict] = [{"role": "system", "content": "You are a coding agent."},
                            {"role": "user", "content": "Review the project and list its problems."}]
    fed: list[int] | None = None
    rows, reused_total, prompt_total = [], 0, 0
    for turn in range(10):
        prompt = render(messages)
        reused = min(common(fed, prompt), len(prompt) - 1) if fed else 0
        if turn:
            rows.append((turn + 1, len(prompt), reused))
            reused_total += reused
            prompt_total += len(prompt)
        if turn % 2 == 0:  # a tool call, as the model writes it
            path = FILES[(turn // 2) % len(FILES)]
            call = json.dumps({"name": "read_file", "arguments": {"path": path}})
            raw = f"<tool_call>\n{call}\n</tool_call>"
            reply = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "read_file", "arguments": {"path": path}}}]}
            after = {"role": "tool", "content": json.dumps({"path": path, "text": "print('hi')\n" * 5})}
        else:
            raw = f"The file looks fine apart from issue {turn}.  "  # trailing spaces: stripped on re-render
            reply = {"role": "assistant", "content": raw.strip()}
            after = {"role": "user", "content": "Go on."}
        fed = [*prompt, *tokenizer.encode(raw, add_special_tokens=False), end]
        messages += [reply, after]
    print("| turn | prompt tokens | reused | share |\n|---|---|---|---|")
    for turn, length, reused in rows:
        print(f"| {turn} | {length} | {reused} | {reused / length:.1%} |")
    print(f"| all | {prompt_total} | {reused_total} | {reused_total / prompt_total:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
