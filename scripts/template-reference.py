#!/usr/bin/env python3
"""Render chat templates with Python jinja2 the way Hugging Face transformers' apply_chat_template
does, as the reference Puna's Jinja renderer is compared against (Tests: ChatTemplateTests).

transformers (utils/chat_template_utils.py) compiles a template in an ImmutableSandboxedEnvironment
with trim_blocks=True, lstrip_blocks=True and the loopcontrols extension plus a no-op
{% generation %} block, replaces the `tojson` filter by json.dumps(ensure_ascii=False, indent,
separators, sort_keys=False), and adds the globals raise_exception(msg) and strftime_now(fmt).
It renders with messages, tools (None unless given), documents (None), add_generation_prompt and
the tokenizer's special tokens (bos_token, eos_token, ...). strftime_now uses a fixed date here
(2026-01-15 10:30:00) so the output is reproducible; Puna's tests pass the same date.

usage: template-reference.py [--bos TEXT] [--eos TEXT] TEMPLATE.jinja... > cases.json
       template-reference.py --snippets < snippets.json > results.json
Prints {"cases": [{template, case, messages, add_generation_prompt, bos_token, eos_token, tools,
output | error}]}: output is the rendered text, error the exception's type and message.
"""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = datetime(2026, 1, 15, 10, 30, 0)
BOS, EOS = "<s>", "</s>"

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello! What is 2+2?"}
A1 = {"role": "assistant", "content": "2+2 is 4."}
U2 = {"role": "user", "content": "And 3+3?"}
UNI = {"role": "user", "content": "  Héllo wörld, 你好 🎉 — \"quotes\" and 'apostrophes'\nsecond line\t tab  "}
A_UNI = {"role": "assistant", "content": "Ça va? ✓ «ok»"}
EMPTY = {"role": "user", "content": ""}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}]
CALL = {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
    "name": "get_weather", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temp\": 21}"}

# (name, messages, add_generation_prompt, tools)
CONVERSATIONS = [
    ("user", [U1], True),
    ("system-user", [SYS, U1], True),
    ("multi-turn", [SYS, U1, A1, U2], True),
    ("multi-turn-no-system", [U1, A1, U2], True),
    ("ends-with-assistant", [SYS, U1, A1], False),
    ("no-generation-prompt", [U1], False),
    ("empty-content", [EMPTY], True),
    ("unicode", [SYS, UNI, A_UNI, U1], True),
    ("tools", [SYS, U1, CALL, RESULT], True, TOOLS),
    ("reasoning", [U1, {"role": "assistant", "content": "4", "reasoning_content": "2 plus 2 makes 4."}, U2], True),
    ("consecutive-users", [SYS, U1, U2], True),
    ("system-only", [SYS], True),
]


class AssistantTracker(Extension):
    """HF's {% generation %} ... {% endgeneration %}: renders its body unchanged."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return FIXED_NOW.strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def snippets(env):
    """Render each template of a JSON list read from stdin with the "multi-turn" conversation."""
    results = []
    for source in json.load(sys.stdin):
        try:
            out = env.from_string(source).render(messages=[SYS, U1, A1, U2], tools=None, documents=None,
                                                 add_generation_prompt=True, bos_token=BOS, eos_token=EOS)
            results.append({"output": out})
        except Exception as e:
            results.append({"error": f"{type(e).__name__}: {e}"})
    json.dump(results, sys.stdout, ensure_ascii=False)


def main():
    global BOS, EOS
    env = make_env()
    if sys.argv[1:] == ["--snippets"]:
        return snippets(env)
    cases = []
    args = sys.argv[1:]
    while args and args[0] in ("--bos", "--eos"):
        if args[0] == "--bos":
            BOS = args[1]
        else:
            EOS = args[1]
        args = args[2:]
    for path in args:
        name = os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            source = f.read()
        try:
            template = env.from_string(source)
            compile_error = None
        except Exception as e:  # syntax errors, unknown filters/tests: every case fails
            template, compile_error = None, f"{type(e).__name__}: {e}"
        for cname, messages, gen, *rest in CONVERSATIONS:
            tools = rest[0] if rest else None
            case = {"template": name, "case": cname, "messages": messages, "add_generation_prompt": gen,
                    "bos_token": BOS, "eos_token": EOS, "tools": tools}
            if compile_error:
                case["error"] = compile_error
            else:
                try:
                    case["output"] = template.render(messages=messages, tools=tools, documents=None,
                                                     add_generation_prompt=gen, bos_token=BOS, eos_token=EOS)
                except Exception as e:
                    case["error"] = f"{type(e).__name__}: {e}"
            cases.append(case)
    json.dump({"cases": cases}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
