"""The figures of an evaluation, as pure functions over what the engine answered: unit-tested without an engine.

Perplexity of a reference given a prompt follows lm-evaluation-harness's log-likelihood: the prompt is tokenized as
the engine tokenizes a prompt (its special tokens included), the reference on its own without special tokens, the two
token lists are joined, and the log-probability of each reference token given every token before it is asked of the
engine (the raw log-softmax at the next position, vLLM's `logprob_token_ids`). A dataset's perplexity is
exp(total negative log-likelihood / total reference tokens): the tokens of a long reference weigh as much as those of
many short ones, as a corpus perplexity does.

The judge metric asks another model for a grade on `JUDGE_SCALE` ("1" to "5"): `judge_prompt` builds the request's
prompt from the rubric, the item and the answer; the engine's output is constrained to the scale (vLLM's structured
outputs, `judge_request`), and `parse_grade` reads it back. A side's figure is its mean grade.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from streams.evaluations import JUDGE_SCALE, Metric, MetricResult


class EngineAnswerError(ValueError):
    """The engine's answer lacks what a figure is computed from."""


def token_logprob(top_logprobs: Mapping[str, Any], token_id: int, position: int) -> float:
    """The log-probability of `token_id` from one position's `top_logprobs` as vLLM answers them with
    `return_tokens_as_token_ids` (keys `token_id:<id>`)."""
    value = top_logprobs.get(f"token_id:{token_id}")
    if value is None:
        raise EngineAnswerError(f"no log-probability for token {token_id} at position {position}")
    logprob = value["logprob"] if isinstance(value, Mapping) else value
    return float(logprob)


def perplexity(logprobs: Sequence[float]) -> float:
    if not logprobs:
        raise ValueError("no tokens")
    return math.exp(-sum(logprobs) / len(logprobs))


def normalized(text: str) -> str:
    return " ".join(text.split())


def exact_match(generated: str, reference: str) -> float:
    """1.0 when the texts are equal up to white space (runs of it count as one space; none at the ends)."""
    return 1.0 if normalized(generated) == normalized(reference) else 0.0


def contains(generated: str, reference: str) -> float:
    """1.0 when the generated text contains the reference (white space normalized in both)."""
    return 1.0 if normalized(reference) in normalized(generated) else 0.0


@cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(generated: str, reference: str) -> float:
    """ROUGE-L F-measure (`rouge-score`'s default tokenizer: lower case, letters and digits)."""
    return float(_rouge().score(reference, generated)["rougeL"].fmeasure)


def text_scores(metrics: Iterable[Metric], generated: str, reference: str) -> dict[str, float]:
    """The text metrics among `metrics` for one generated text."""
    scorers = {Metric.EXACT_MATCH: exact_match, Metric.CONTAINS: contains, Metric.ROUGE_L: rouge_l}
    return {m.value: scorers[m](generated, reference) for m in metrics if m in scorers}


def judge_prompt(rubric: str, prompt: str, answer: str, reference: str | None = None) -> str:
    """What the judge model is asked: the rubric, the item's prompt, its reference (when the judge is shown one) and
    the answer to grade, then the scale; its answer is one grade of `JUDGE_SCALE` (`judge_request`)."""
    lines = [rubric.strip(), "", f"Prompt: {prompt}"]
    if reference is not None:
        lines.append(f"Reference: {reference}")
    lines += [f"Answer: {answer}", f"Grade ({JUDGE_SCALE[0]}-{JUDGE_SCALE[-1]}):"]
    return "\n".join(lines)


def judge_request(model: str, prompt: str) -> dict[str, Any]:
    """The completions request for one grade: greedy, its output constrained to one of `JUDGE_SCALE` with vLLM's
    structured outputs (`structured_outputs.choice`; vLLM 0.32 ignores the older `guided_choice`, with a warning)."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": 8,
        "temperature": 0,
        "structured_outputs": {"choice": list(JUDGE_SCALE)},
    }


def parse_grade(text: str) -> float:
    """The grade in a judge's output: one of `JUDGE_SCALE` (white space around it allowed), as a number."""
    grade = text.strip()
    if grade not in JUDGE_SCALE:
        raise EngineAnswerError(f"the judge answered {text!r}, not one of {', '.join(JUDGE_SCALE)}")
    return float(grade)


@dataclass(frozen=True)
class SideScore:
    """One item scored on one side (the adapter or the baseline)."""

    scores: Mapping[str, float]  # text metrics (the judge's grade among them)
    reference_logprobs: Sequence[float] | None = None  # perplexity's raw material
    text: str | None = None
    judge_output: str | None = None  # what the judge answered, as it answered it


def side_record(side: SideScore) -> dict[str, Any]:
    record: dict[str, Any] = dict(side.scores)
    if side.reference_logprobs is not None:
        record["perplexity"] = perplexity(side.reference_logprobs)
        record["nll"] = -sum(side.reference_logprobs)
        record["tokens"] = len(side.reference_logprobs)
    if side.text is not None:
        record["text"] = side.text
    if side.judge_output is not None:
        record["judge_output"] = side.judge_output
    return record


def aggregate(metrics: Sequence[Metric], rows: Sequence[Mapping[str, Any]]) -> list[MetricResult]:
    """Each metric over every item's result (`{"adapter": {...}, "baseline": {...}}` as `side_record` writes them):
    perplexity over all reference tokens, the others as a mean; with the difference adapter - baseline."""
    results = []
    for metric in metrics:
        adapter = _side_figure(metric, [row["adapter"] for row in rows])
        baseline = _side_figure(metric, [row["baseline"] for row in rows])
        difference = adapter - baseline if adapter is not None and baseline is not None else None
        results.append(
            MetricResult(metric=metric, adapter=adapter, baseline=baseline, difference=difference, items=len(rows))
        )
    return results


def _side_figure(metric: Metric, records: Sequence[Mapping[str, Any]]) -> float | None:
    if not records:
        return None
    if metric is Metric.PERPLEXITY:
        tokens = sum(int(r["tokens"]) for r in records)
        return math.exp(sum(float(r["nll"]) for r in records) / tokens) if tokens else None
    return sum(float(r[metric.value]) for r in records) / len(records)


def progress_step(done: int, total: int, steps: int = 4) -> int:
    """Which quarter (of `steps`) `done` of `total` items has reached: progress is reported once per step."""
    if total <= 0:
        return steps
    return min(steps, done * steps // total)
