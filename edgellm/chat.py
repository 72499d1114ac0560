"""Chat templates: a model's Jinja2 template rendered the way Hugging Face transformers renders it.

The template comes from the GGUF (`tokenizer.chat_template`) and is untrusted code, so it runs in jinja2's
`ImmutableSandboxedEnvironment` with the globals and filters transformers gives templates (`raise_exception`,
`strftime_now`, a `tojson` that does not escape HTML, `dict`, a `namespace` that refuses dunder names, the
`{% generation %}` block and loop controls). Without a template, ChatML is used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from edgellm.errors import ChatTemplateError

# ChatML, as llama.cpp formats it for models whose file has no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Message fields a reasoning text may come under; templates read the first (transformers fills all three).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _TemplateRaised(Exception):
    """raise_exception(...) called by a template."""


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text of `messages` ({"role": ..., "content": ...} dicts) under `template` (ChatML when None).

    Equal to transformers' `apply_chat_template(messages, tokenize=False, ...)` with the same special tokens.
    """
    compiled = _compile(CHATML_TEMPLATE if template is None else template)
    chat = _check_messages(messages)
    if tools is not None:
        if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools):
            raise ChatTemplateError("tools: expected a list of JSON-schema dicts")
        tools = [_plain(t) for t in tools]
    try:
        return compiled.render(
            messages=chat,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except _TemplateRaised as e:
        raise ChatTemplateError(f"chat template refused the messages: {e}") from None
    except Exception as e:  # noqa: BLE001 (the template is foreign code: what it throws is its failure)
        raise ChatTemplateError(f"chat template failed while rendering: {type(e).__name__}: {e}") from None


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    """Plain copies of the messages (None-valued keys dropped, as transformers does), or a ChatTemplateError."""
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages: expected a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"messages[{i}]: expected a dict with 'role' and 'content', got {type(m).__name__}")
        m = {k: v for k, v in m.items() if v is not None}
        role = m.get("role")
        if not isinstance(role, str):
            raise ChatTemplateError(f"messages[{i}]: 'role' must be a string")
        content = m.get("content")
        if content is None and "tool_calls" not in m:
            raise ChatTemplateError(f"messages[{i}]: 'content' is missing")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise ChatTemplateError(f"messages[{i}]: 'content' must be a string or a list of parts, "
                            f"got {type(content).__name__}")
        m = _plain(m)
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def _plain(value: Any) -> Any:
    """Rebuild the value from plain JSON types: the sandbox then never sees a caller's rich object."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks): renders its body."""

        tags = frozenset({"generation"})

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    class TemplateNamespace(jinja2.utils.Namespace):
        """namespace(...) that refuses underscore names (no reaching into Python internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r}: underscore names are refused")

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise _TemplateRaised(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template: syntax error at line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template: {e}") from None


__all__ = ["CHATML_TEMPLATE", "render_chat"]
