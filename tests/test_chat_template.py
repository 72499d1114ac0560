"""Chat templates rendered by edgellm.chat equal transformers' apply_chat_template(tokenize=False)."""

from __future__ import annotations

import datetime

import pytest

from edgellm.chat import CHATML_TEMPLATE, render_chat
from edgellm.errors import ChatTemplateError, EdgeLLMError
from edgellm.gguf import GGUFReader
from helpers.smollm2 import smollm2_gguf_path
from helpers.tiny_models import tiny_checkpoint

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name three colours, please: ünïcödé & <tags> \"quotes\"\n  and a newline."},
    ],
    [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  leading and trailing spaces  "}],
]

# Whitespace control (trim_blocks / lstrip_blocks decide the output here), namespace, loop controls,
# tojson of tools and non-ASCII arguments, raise_exception, the {% generation %} block, dict().
RICH_TEMPLATE = """\
{% set ns = namespace(system='', turns=0) %}
{% if messages[0]['role'] == 'system' %}
    {% set ns.system = messages[0]['content'] %}
{% endif %}
<|begin|>{{ bos_token }}
{% if tools %}
    Tools:
    {% for tool in tools %}
        {{ tool | tojson }}
    {% endfor %}
{% endif %}
{% if ns.system %}
    [SYS] {{ ns.system }}
{% endif %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% if message['role'] not in ['user', 'assistant', 'tool'] %}
        {{ raise_exception('unknown role: ' + message['role']) }}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
    <{{ message['role'] }} n={{ ns.turns }}>
    {% if message['role'] == 'assistant' %}
        {% generation %}{{ message['content'] | trim }}{{ eos_token }}{% endgeneration %}
        {% if message.get('tool_calls') %}
            {{ message['tool_calls'] | tojson(indent=2, sort_keys=True) }}
        {% endif %}
    {% else %}
        {{ message['content'] }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
    <assistant n={{ ns.turns + 1 }}>
{% endif %}
{{ dict(a=1, b='x') | tojson(separators=(',', ':')) }}
"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city (°C)",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def _hf_tokenizer(arch: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint(arch)))


def _hf(tok, template: str | None, messages, add_generation_prompt: bool, tools=None) -> str:
    return tok.apply_chat_template(messages, chat_template=template, tools=tools, tokenize=False,
                                   add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("arch", ["qwen2", "llama_spm", "gemma3"])
def test_tiny_model_templates_match_transformers(arch: str, convert_tiny) -> None:
    tok = _hf_tokenizer(arch)
    template = GGUFReader(convert_tiny(arch))["tokenizer.chat_template"]
    assert template == tok.chat_template  # the converter stored the checkpoint's template
    for conv in CONVERSATIONS:
        for gen in (True, False):
            ours = render_chat(template, conv, bos_token=tok.bos_token, eos_token=tok.eos_token,
                               add_generation_prompt=gen)
            assert ours == _hf(tok, template, conv, gen), (arch, conv, gen)


def test_smollm2_template_from_the_gguf_matches_transformers() -> None:
    template = GGUFReader(smollm2_gguf_path())["tokenizer.chat_template"]
    assert "You are a helpful AI assistant named SmolLM" in template
    tok = _hf_tokenizer("qwen2")  # the SmolLM2 tokenizer
    for conv in CONVERSATIONS:
        for gen in (True, False):
            ours = render_chat(template, conv, bos_token="<|im_start|>", eos_token="<|im_end|>",
                               add_generation_prompt=gen)
            assert ours == _hf(tok, template, conv, gen)
    one = render_chat(template, CONVERSATIONS[0], bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert one == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                   "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                   "<|im_start|>assistant\n")


def test_rich_template_matches_transformers() -> None:
    tok = _hf_tokenizer("qwen2")
    tool_turn = [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "  21 °C.  "},
    ]
    for conv in [*CONVERSATIONS, tool_turn]:
        for gen in (True, False):
            for tools in (None, TOOLS):
                ours = render_chat(RICH_TEMPLATE, conv, bos_token="<B>", eos_token="<E>",
                                   add_generation_prompt=gen, tools=tools)
                # content None renders as nothing (as transformers 5 does; 4.x passes None on to the template)
                ref = [{**m, "content": "" if m.get("content") is None else m["content"]} for m in conv]
                theirs = tok.apply_chat_template(ref, chat_template=RICH_TEMPLATE, tools=tools, tokenize=False,
                                                 add_generation_prompt=gen, bos_token="<B>", eos_token="<E>")
                assert ours == theirs, (conv, gen, tools)
    text = render_chat(RICH_TEMPLATE, tool_turn, bos_token="<B>", eos_token="<E>", tools=TOOLS)
    assert '"city": "Zürich"' in text and "(°C)" in text  # tojson keeps non-ASCII and does not escape HTML
    assert '{"a":1,"b":"x"}' in text


def test_chatml_when_the_file_has_no_template() -> None:
    conv = CONVERSATIONS[1]
    assert render_chat(None, conv, bos_token="<s>", eos_token="</s>") == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        f"<|im_start|>user\n{conv[3]['content']}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tok = _hf_tokenizer("gemma3")
    assert render_chat(None, conv, add_generation_prompt=False) == _hf(tok, CHATML_TEMPLATE, conv, False)


def test_strftime_now() -> None:
    text = render_chat("{{ strftime_now('%Y-%m-%d') }}", [])
    today = datetime.date.today()
    assert text in {today.isoformat(), (today + datetime.timedelta(days=1)).isoformat()}


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize(
    ("template", "messages", "match"),
    [
        ("{% for m in messages %}{{ m['content'] }", CONVERSATIONS[0], r"syntax error at line 1"),
        ("{% if x %}\n{% endfor %}", CONVERSATIONS[0], r"syntax error at line 2"),
        (RICH_TEMPLATE, [{"role": "robot", "content": "beep"}], r"refused the messages: unknown role: robot"),
        ("{{ messages.__class__.__mro__ }}", CONVERSATIONS[0], r"failed while rendering: SecurityError"),
        ("{% set ns = namespace(_x=1) %}", CONVERSATIONS[0], r"underscore names are refused"),
        ("{{ messages[0]['content'] + 1 }}", CONVERSATIONS[0], r"failed while rendering: TypeError"),
        ("{{ messages.append(1) }}", CONVERSATIONS[0], r"failed while rendering: SecurityError"),
        (None, "not a list", r"messages: expected a list"),
        (None, ["user: hi"], r"messages\[0\]: expected a dict"),
        (None, [{"content": "hi"}], r"messages\[0\]: 'role' must be a string"),
        (None, [{"role": "user"}], r"messages\[0\]: 'content' is missing"),
        (None, [{"role": "user", "content": 5}], r"messages\[0\]: 'content' must be a string"),
    ],
)
def test_errors_are_one_clear_project_error(template, messages, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match) as info:
        render_chat(template, messages)
    assert isinstance(info.value, EdgeLLMError)
