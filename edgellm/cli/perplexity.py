"""`edgellm perplexity`: a model's perplexity on a text file."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from edgellm.cli._common import fail, load_model, one_line_errors


@click.command("perplexity")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ctx", "n_ctx", type=click.IntRange(min=4), default=512, show_default=True,
              help="Tokens per window.")
@click.option("-t", "--threads", type=click.IntRange(min=0), default=0,
              help="Threads for the forward pass (0 = all cores).")
def perplexity(model: Path, file: Path, n_ctx: int, threads: int) -> None:
    """Perplexity of MODEL (a GGUF file, or a folder made by `edgellm convert --format onnx`) on FILE (UTF-8
    text).

    The text is tokenized whole and cut into windows of --ctx tokens; each window starts with BOS and
    the second half of its tokens are scored. PPL = exp(mean negative log-likelihood), the procedure of
    llama.cpp's perplexity tool. Progress goes to stderr.
    """
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"{file}: no such file")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{file}: cannot read it as UTF-8 text: {e}")
    with one_line_errors():
        llm = load_model(model, n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx)
        with llm:
            t0 = time.perf_counter()
            tty = sys.stderr.isatty()

            def progress(done: int, total: int) -> None:
                rate = done * n_ctx / max(time.perf_counter() - t0, 1e-9)
                line = f"perplexity: window {done}/{total} ({rate:.0f} tokens/s)"
                if tty:
                    sys.stderr.write("\r\033[K" + line + ("\n" if done == total else ""))
                    sys.stderr.flush()
                elif done == total or done % max(1, total // 10) == 0:
                    click.echo(line, err=True)

            result = llm.perplexity(text, n_ctx=n_ctx, progress=progress)
            click.echo(f"perplexity {result.ppl:.4f} over {result.n_scored} tokens scored ({result.n_windows} windows "
                       f"of {n_ctx}; mean NLL {result.nll:.5f} nats) in {time.perf_counter() - t0:.1f} s")
