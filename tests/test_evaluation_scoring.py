"""Evaluations' pure parts: the dataset rules (the 422 reasons with their field paths), the figures computed from
what the engine answers, the aggregation adapter vs baseline, and the aggregate's decisions."""

from __future__ import annotations

import math

import pytest

from agents.aggregate import Rejected
from agents.evaluations import aggregate as evaluation
from agents.evaluations.scoring import (
    EngineAnswerError,
    SideScore,
    aggregate,
    contains,
    exact_match,
    judge_prompt,
    judge_request,
    parse_grade,
    perplexity,
    progress_step,
    rouge_l,
    side_record,
    token_logprob,
)
from api.auth import hash_key, key_id_of
from infra.gateway_client import internal_api_key
from infra.secrets import InMemoryKeyStore, SecretBox
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.evaluations import (
    MAX_ITEMS,
    CancelEvaluation,
    CompleteEvaluation,
    DatasetItem,
    DatasetProblem,
    EvaluationSpec,
    EvaluationStatus,
    JudgeSpec,
    Metric,
    ReportEvaluationProgress,
    RequestEvaluation,
    Target,
    dataset_problems,
    parse_jsonl,
)
from streams.outcomes import RejectionCode
from streams.serialization import envelope_for

# --- dataset rules -------------------------------------------------------------------------------------------------


def test_jsonl_lines_become_items_and_blank_lines_are_skipped() -> None:
    data = b'{"prompt": "2+2=", "reference": "4"}\n\n{"prompt": "hi"}\n'
    assert parse_jsonl(data) == [DatasetItem(prompt="2+2=", reference="4"), DatasetItem(prompt="hi")]


@pytest.mark.parametrize(
    ("data", "loc", "words"),
    [
        (b'{"prompt": "a"}\nnot json\n', ("body", "file", "line", 2), "line 2 is not JSON"),
        (b'{"reference": "a"}\n', ("body", "file", "line", 1, "prompt"), "has no `prompt`"),
        (b'{"prompt": 3}\n', ("body", "file", "line", 1, "prompt"), "non-empty string"),
        (b'["prompt"]\n', ("body", "file", "line", 1), "not a JSON object"),
        (b'{"prompt": "a", "answer": "b"}\n', ("body", "file", "line", 1, "answer"), "unknown field"),
        (b"\n\n", ("body", "file"), "no items"),
        (b"\xff\xfe", ("body", "file"), "not UTF-8"),
    ],
)
def test_a_bad_dataset_line_names_its_line_and_field(data: bytes, loc: tuple[object, ...], words: str) -> None:
    problem = parse_jsonl(data)
    assert isinstance(problem, DatasetProblem)
    assert problem.loc == loc and words in problem.msg


def test_a_dataset_over_the_limit_is_refused() -> None:
    data = b'{"prompt": "a"}\n' * 4
    problem = parse_jsonl(data, limit=3)
    assert isinstance(problem, DatasetProblem) and "more than 3 items" in problem.msg
    assert isinstance(parse_jsonl(data, limit=4), list)


def test_metrics_that_compare_with_a_reference_need_one_on_every_item() -> None:
    items = [DatasetItem(prompt="a", reference="b"), DatasetItem(prompt="c")]
    [problem] = dataset_problems(items, (Metric.EXACT_MATCH,))
    assert problem.loc == ("body", "items", 1, "reference") and "exact_match" in problem.msg
    assert dataset_problems(items[:1], (Metric.PERPLEXITY, Metric.ROUGE_L)) == []
    too_many = [DatasetItem(prompt="a", reference="b")] * (MAX_ITEMS + 1)
    assert [p.loc for p in dataset_problems(too_many, (Metric.CONTAINS,), where="dataset_id")] == [
        ("body", "dataset_id")
    ]
    big = [DatasetItem(prompt="p" * 10_000, reference="r")] * 30
    [inline] = dataset_problems(big, (Metric.CONTAINS,))
    assert inline.loc == ("body", "items") and "JSONL file" in inline.msg
    assert dataset_problems(big, (Metric.CONTAINS,), where="dataset_id") == []


# --- figures -------------------------------------------------------------------------------------------------------


def test_a_token_s_logprob_is_read_from_vllm_s_top_logprobs_keyed_by_token_id() -> None:
    answer = {"token_id:9": -0.5, "token_id:3": -0.2}
    assert token_logprob(answer, 9, 4) == -0.5
    assert token_logprob({"token_id:9": {"logprob": -1.5}}, 9, 4) == -1.5
    with pytest.raises(EngineAnswerError, match="no log-probability for token 4 at position 7"):
        token_logprob(answer, 4, 7)
    assert perplexity([-0.5, -2.0]) == pytest.approx(math.exp(1.25))


def test_text_metrics() -> None:
    assert exact_match("  4\n", "4") == 1.0 and exact_match("4.", "4") == 0.0
    assert exact_match("a  b", "a b") == 1.0
    assert contains("the answer is 4.", "4") == 1.0 and contains("five", "4") == 0.0
    # LCS of "the cat sat" and "the cat" is 2 tokens: precision 2/2, recall 2/3, F = 0.8
    assert rouge_l("the cat", "the cat sat") == pytest.approx(0.8)
    assert rouge_l("The Cat sat", "the cat sat") == pytest.approx(1.0)
    assert rouge_l("dog", "the cat sat") == 0.0


def test_aggregation_weighs_perplexity_by_tokens_and_averages_the_rest() -> None:
    rows = [
        {
            "adapter": side_record(SideScore({"exact_match": 1.0}, [-1.0, -1.0, -1.0], "x")),
            "baseline": side_record(SideScore({"exact_match": 0.0}, [-2.0, -2.0, -2.0], "y")),
        },
        {
            "adapter": side_record(SideScore({"exact_match": 0.0}, [-4.0], "x")),
            "baseline": side_record(SideScore({"exact_match": 0.0}, [-1.0], "y")),
        },
    ]
    ppl, em = aggregate((Metric.PERPLEXITY, Metric.EXACT_MATCH), rows)
    assert ppl.adapter == pytest.approx(math.exp(7 / 4)) and ppl.baseline == pytest.approx(math.exp(7 / 4))
    assert ppl.difference == pytest.approx(0.0) and ppl.items == 2
    assert (em.adapter, em.baseline, em.difference) == (0.5, 0.0, 0.5)
    assert rows[0]["adapter"]["perplexity"] == pytest.approx(math.e) and rows[0]["adapter"]["tokens"] == 3


def test_progress_is_reported_by_quarter() -> None:
    assert [progress_step(done, 10) for done in range(11)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4]
    assert progress_step(0, 0) == 4


# --- decisions -----------------------------------------------------------------------------------------------------


def spec(**changes: object) -> EvaluationSpec:
    values: dict[str, object] = {
        "adapter": Target(model="a@v1", adapter_id="default/a", version=1),
        "baseline": Target(model="tiny"),
        "deploy_id": "d1",
        "engine_model": "tiny",
        "base_model": "o/tiny",
        "metrics": (Metric.PERPLEXITY,),
        "items": (DatasetItem(prompt="p", reference="r"),),
        "item_count": 1,
    }
    return EvaluationSpec.model_validate({**values, **changes})


def run(current: evaluation.Evaluation | None, payload: Payload) -> tuple[list[Payload], evaluation.Evaluation | None]:
    command = envelope_for(payload, aggregate_id="e1", actor=SYSTEM_ACTOR)
    payloads = list(evaluation.decide(current, command))
    for p in payloads:
        event: Envelope = envelope_for(p, aggregate_id="e1", actor=SYSTEM_ACTOR, aggregate_version=1)
        current = evaluation.evolve(current, event)
    return payloads, current


def test_a_run_is_requested_once_progresses_and_completes() -> None:
    [_], state = run(None, RequestEvaluation(spec=spec()))
    assert state is not None and state.running
    with pytest.raises(Rejected) as taken:
        run(state, RequestEvaluation(spec=spec()))
    assert taken.value.code is RejectionCode.CONFLICT
    [_], state = run(state, ReportEvaluationProgress(items_done=1, items_total=4))
    assert state is not None and state.items_done == 1
    assert run(state, ReportEvaluationProgress(items_done=1, items_total=4))[0] == []  # a repeat changes nothing
    [_], state = run(state, CompleteEvaluation(results=(), results_key="k", items=1))
    assert state is not None and state.status is EvaluationStatus.COMPLETED
    assert run(state, ReportEvaluationProgress(items_done=3, items_total=4))[0] == []  # late reports: nothing
    with pytest.raises(Rejected) as ended:
        run(state, CancelEvaluation())
    assert ended.value.code is RejectionCode.CONFLICT


def test_a_cancelled_run_ignores_its_late_outcome_and_unknown_runs_are_not_found() -> None:
    _, state = run(None, RequestEvaluation(spec=spec()))
    [_], state = run(state, CancelEvaluation(reason="enough"))
    assert state is not None and state.status is EvaluationStatus.CANCELLED
    assert run(state, CompleteEvaluation(results=(), results_key="k", items=1))[0] == []
    with pytest.raises(Rejected) as missing:
        run(None, CancelEvaluation())
    assert missing.value.code is RejectionCode.NOT_FOUND


def test_the_aggregate_applies_the_dataset_rules_too() -> None:
    with pytest.raises(Rejected) as refused:
        run(None, RequestEvaluation(spec=spec(items=(DatasetItem(prompt="p"),))))
    assert refused.value.code is RejectionCode.INVALID and refused.value.field == "items"
    with pytest.raises(Rejected):
        run(None, RequestEvaluation(spec=spec(item_count=2)))


# --- the judge -------------------------------------------------------------------------------------------------------


def test_the_judge_prompt_holds_the_rubric_the_item_and_the_answer() -> None:
    assert judge_prompt(" Is it right? ", "2+2=", " 4", "4") == (
        "Is it right?\n\nPrompt: 2+2=\nReference: 4\nAnswer:  4\nGrade (1-5):"
    )
    assert "Reference" not in judge_prompt("Is it right?", "2+2=", "4")  # a judge not shown the reference


def test_the_judge_request_constrains_the_output_to_the_scale_with_structured_outputs() -> None:
    body = judge_request("judge-model", "the prompt")
    assert body["structured_outputs"] == {"choice": ["1", "2", "3", "4", "5"]}
    assert body["temperature"] == 0 and body["model"] == "judge-model" and body["prompt"] == "the prompt"
    assert "guided_choice" not in body  # vLLM 0.32 ignores it: the output would not be constrained


@pytest.mark.parametrize(("text", "grade"), [("3", 3.0), (" 5\n", 5.0), ("1", 1.0)])
def test_a_grade_is_read_from_the_judge_s_output(text: str, grade: float) -> None:
    assert parse_grade(text) == grade


@pytest.mark.parametrize("text", ["", "6", "0", "three", "3 stars", "4.5"])
def test_an_output_off_the_scale_is_an_engine_answer_error(text: str) -> None:
    with pytest.raises(EngineAnswerError, match="not one of 1, 2, 3, 4, 5"):
        parse_grade(text)


def test_judge_grades_are_averaged_per_side_and_kept_per_item() -> None:
    rows = [
        {
            "adapter": side_record(SideScore(scores={"judge": 4.0}, text="a", judge_output="4")),
            "baseline": side_record(SideScore(scores={"judge": 1.0}, text="b", judge_output="1")),
        },
        {
            "adapter": side_record(SideScore(scores={"judge": 5.0}, text="c", judge_output="5")),
            "baseline": side_record(SideScore(scores={"judge": 2.0}, text="d", judge_output="2")),
        },
    ]
    assert rows[0]["adapter"] == {"judge": 4.0, "text": "a", "judge_output": "4"}
    [result] = aggregate((Metric.JUDGE,), rows)
    assert (result.adapter, result.baseline, result.difference, result.items) == (4.5, 1.5, 3.0, 2)


def test_a_judge_shown_the_reference_needs_one_on_every_item() -> None:
    items = [DatasetItem(prompt="a", reference="b"), DatasetItem(prompt="c")]
    [problem] = dataset_problems(items, (Metric.JUDGE,))
    assert problem.loc == ("body", "items", 1, "reference") and "judge" in problem.msg
    assert dataset_problems(items, (Metric.JUDGE,), judge_sees_reference=False) == []


def test_the_judge_metric_and_a_judge_come_together() -> None:
    judge = JudgeSpec(model="tiny", deploy_id="d1", rubric="Grade it.")
    for bad in (spec(metrics=(Metric.JUDGE,)), spec(judge=judge)):
        with pytest.raises(Rejected) as refused:
            run(None, RequestEvaluation(spec=bad))
        assert refused.value.code is RejectionCode.INVALID and refused.value.field == "judge"
    [_], state = run(None, RequestEvaluation(spec=spec(metrics=(Metric.JUDGE,), judge=judge)))
    assert state is not None and state.spec.judge == judge
    no_reference = judge.model_copy(update={"reference": False})
    items = (DatasetItem(prompt="p"),)
    with pytest.raises(Rejected):
        run(None, RequestEvaluation(spec=spec(metrics=(Metric.JUDGE,), judge=judge, items=items)))
    run(None, RequestEvaluation(spec=spec(metrics=(Metric.JUDGE,), judge=no_reference, items=items)))


def test_the_agents_key_is_derived_from_the_master_key_in_the_apis_format() -> None:
    box = SecretBox(b"k" * 32, InMemoryKeyStore())
    key = internal_api_key(box, "evaluation-agent")
    assert key == internal_api_key(SecretBox(b"k" * 32, InMemoryKeyStore()), "evaluation-agent")
    assert key_id_of(key.key) == key.key_id and hash_key(key.key) == key.key_hash
    assert internal_api_key(SecretBox(b"j" * 32, InMemoryKeyStore()), "evaluation-agent").key != key.key
    assert internal_api_key(box, "other").key != key.key
