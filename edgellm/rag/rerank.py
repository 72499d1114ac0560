"""Reranking by query likelihood: the language model reads each candidate passage and scores how likely it
would be to ask the question after it (the mean log-probability of the question's tokens).

A generative model scores the pair jointly, token by token, where the embedder compares two vectors made
apart; it needs no training for the task (Sachan et al., "Improving Passage Retrieval with Zero-Shot
Question Generation", 2022). The default model, SmolLM2-135M, reranking the hybrid search's best 20 lifts
recall@5 / MRR@5 of the bench's questions (bench/rag.py) from 0.953 / 0.862 to 0.974 / 0.914 on
Valgrind's manual (the answering page ranks higher for 25 questions, lower for 7), and from 0.96 / 0.905 to
0.98 / 0.915 on Node.js's (10 higher, 8 lower).

It costs one prefill of each candidate (about 220 tokens): 20 candidates take about 3 s on two cores, so
it serves answers (`Index.answer` reranks by default) and is asked for explicitly in search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgellm.errors import ContextFullError, InvalidArgumentError
from edgellm.llm import token_log_probs
from edgellm.rag.search import SearchResult

# What the model reads before the question. Short and plain: small models follow it.
INSTRUCTION = "Passage:\n{passage}\n\nWrite a question that this passage answers."
_SLOT = "\x00passage\x00"  # marks the passage's place in the rendered prompt
MAX_PASSAGE_TOKENS = 384
MAX_QUESTION_TOKENS = 64
# Candidates the reranker reads per requested result, and at least this many. The run that chose it
# reranked the hybrid list's best 10 / 15 / 20 for 5 results (one scoring of 20, cut at 10 and 15),
# recall@5 / MRR@5 on the bench's questions: Valgrind 0.974 / 0.903, 0.974 / 0.912, 0.974 / 0.910;
# Node.js 0.96 / 0.885, 0.97 / 0.915, 0.98 / 0.915. Fewer than 20 lose Node.js's deeper answers.
DEPTH_PER_RESULT = 4
MIN_DEPTH = 20


class QueryLikelihood:
    """Scores (question, passage) pairs with `llm` (an edgellm.LLM). The prompt is rendered with the model's
    chat template (ChatML when the file has none); the part before the passage is evaluated once and kept
    in the KV cache for every candidate. Passage text is tokenized as plain text: special-token text in a
    document stays text."""

    def __init__(self, llm: Any, *, max_passage_tokens: int = MAX_PASSAGE_TOKENS) -> None:
        if max_passage_tokens < 1:
            raise InvalidArgumentError(f"max_passage_tokens={max_passage_tokens}: must be at least 1")
        self.llm = llm
        self.max_passage_tokens = max_passage_tokens
        self._prompt: tuple[list[int], list[int]] | None = None

    def _prompt_tokens(self) -> tuple[list[int], list[int]]:
        """(tokens before the passage, tokens after it up to where the question starts)."""
        if self._prompt is None:
            llm = self.llm
            text = llm.render_chat([{"role": "user", "content": INSTRUCTION.format(passage=_SLOT)}])
            before, _, after = text.partition(_SLOT)
            self._prompt = llm.tokenize_prompt(before), llm.tokenize(after, add_special=False, parse_special=True)
        return self._prompt

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        """Mean log-probability of the question's tokens after each passage (higher: more likely)."""
        llm = self.llm
        head, tail = self._prompt_tokens()
        q = llm.tokenize(" ".join(question.split()), add_special=False, parse_special=False)[:MAX_QUESTION_TOKENS]
        if not q or not passages:
            return [0.0] * len(passages)
        room = min(self.max_passage_tokens, llm.n_ctx - len(head) - len(tail) - len(q))
        if room < 1:
            raise ContextFullError(f"rerank: the model's context ({llm.n_ctx} tokens) leaves no room for a passage "
                                   f"after the prompt ({len(head) + len(tail)} tokens) and the question ({len(q)})")
        llm.reset()
        llm.eval(head)
        out = []
        for passage in passages:
            body = llm.tokenize(" ".join(passage.split()), add_special=False, parse_special=False)[:room]
            llm.truncate(len(head))
            llm.eval(body + tail)
            rows = [llm.last_logits()[-1:]]
            if len(q) > 1:
                llm.eval(q[:-1], logits_all=True)
                rows.append(llm.last_logits())
            out.append(float(token_log_probs(np.concatenate(rows), q).mean()))
        return out


def depth(k: int) -> int:
    """How many of the search's candidates a rerank for k results reads."""
    return max(DEPTH_PER_RESULT * k, MIN_DEPTH)


def passage_text(result: SearchResult) -> str:
    """What the model reads of a candidate: its document's title, then its text."""
    return f"{result.title}\n{result.text}" if result.title else result.text


def rerank(question: str, candidates: Sequence[SearchResult], llm: Any, k: int) -> list[SearchResult]:
    """The k best of candidates (the search's list, best first) by the sum of two standard scores over the
    list: the search's own score and the model's query likelihood, each less its mean over the candidates,
    over its standard deviation. Combined, not replaced: likelihood alone helps where the search's order is
    weak and hurts where it is strong; scores, not ranks, because a likelihood far above the rest is
    stronger evidence than a first rank by a hair (the bench's figures: above MIN_DEPTH). A result's score
    becomes the mean of its two standard scores; ties keep the search's order."""
    if len(candidates) <= 1:
        return list(candidates[:k])
    likelihood = QueryLikelihood(llm).scores(question, [passage_text(r) for r in candidates])
    combined = (_standard([r.score for r in candidates]) + _standard(likelihood)) / 2
    order = sorted(range(len(candidates)), key=lambda i: (-combined[i], i))
    return [replace(candidates[i], score=float(combined[i])) for i in order[:k]]


def _standard(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    spread = x.std()
    return (x - x.mean()) / spread if spread > 0 else np.zeros_like(x)
