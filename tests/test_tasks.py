"""ASR/MSR prompt goldens (paper and compact styles), λ and task interleaving, and
prediction extraction."""

from __future__ import annotations

import pytest

from rlpt_jax.data.segments import Sample
from rlpt_jax.data.tasks import TaskConfig, extract_prediction, make_task, make_tasks, task_kind

S, E = "<|startofprediction|>", "<|endofprediction|>"

SAMPLE = Sample(
    doc_id="lovelace",
    index=3,
    context="Ada Lovelace wrote the first algorithm. She worked with Charles Babbage.",
    target="Her notes were published in 1843.",
    following=("They describe Bernoulli numbers.", "She is a pioneer."),
)

# RLPT v2 (arXiv 2509.19249), the ASR prompt printed in the paper: the instruction to
# complete the text under "### Context" with the most probable next sentence, then to
# reason step by step and wrap the answer in the prediction tags, then "### Context" and
# the context, last (spec/rlpt.md, "Prompt structure").
ASR_GOLDEN = (
    "Continue the text shown under ### Context by predicting the single most probable "
    "next sentence.\n"
    "Think it through step by step, then write your final answer between "
    "<|startofprediction|> and <|endofprediction|>.\n"
    "\n"
    "### Context\n"
    "Ada Lovelace wrote the first algorithm. She worked with Charles Babbage."
)

# RLPT v2, the MSR prompt printed in the paper: "## Text Material ##:" with s_<i, <MASK>,
# s_{i+1}, then "## Task ##:" fill <MASK> with fitting sentences (or a solution step),
# reasoning carefully step by step, the best prediction in the same tags.
MSR_GOLDEN = (
    "## Text Material ##: Ada Lovelace wrote the first algorithm. She worked with "
    "Charles Babbage.\n"
    "<MASK>\n"
    "They describe Bernoulli numbers.\n"
    "## Task ##: Work out which sentences (or which solution step) belong in place of "
    "<MASK> in the text material above. Reason it through carefully, step by step, then "
    "write your best prediction for <MASK> between <|startofprediction|> and "
    "<|endofprediction|>."
)

# This project's earlier prompts, kept as prompt_style="compact".
COMPACT_ASR_GOLDEN = (
    "### Context\n"
    "Ada Lovelace wrote the first algorithm. She worked with Charles Babbage.\n"
    "\n"
    "Predict the sentence that comes right after the context above. Reason step by step "
    "first, then give your prediction between <|startofprediction|> and "
    "<|endofprediction|>."
)

COMPACT_MSR_GOLDEN = (
    "## Text Material ##: Ada Lovelace wrote the first algorithm. She worked with "
    "Charles Babbage.\n"
    "<MASK>\n"
    "They describe Bernoulli numbers.\n"
    "## Task ##: Fill the <MASK> in the text material with the missing sentence. Reason "
    "step by step first, then give the missing sentence between <|startofprediction|> "
    "and <|endofprediction|>."
)


def chatml(messages):
    """A Qwen-style chat template with the generation prompt."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def test_asr_golden():
    task = make_task(SAMPLE, TaskConfig(), kind="asr")
    assert task.kind == "asr"
    assert task.prompt == ASR_GOLDEN
    assert task.messages == ({"role": "user", "content": ASR_GOLDEN},)
    assert task.reference_segments == (
        "Her notes were published in 1843.",
        "They describe Bernoulli numbers.",
        "She is a pioneer.",
    )


def test_msr_golden():
    task = make_task(SAMPLE, TaskConfig(), kind="msr")
    assert task.prompt == MSR_GOLDEN
    # The masked sentence itself must never leak into the prompt.
    assert "1843" not in task.prompt


def test_paper_asr_puts_the_instruction_before_the_context():
    prompt = make_task(SAMPLE, TaskConfig(), kind="asr").prompt
    assert prompt.index("predicting") < prompt.index(S) < prompt.index("### Context\n")
    assert prompt.endswith("### Context\n" + SAMPLE.context)


def test_compact_style_keeps_the_earlier_prompts():
    config = TaskConfig(prompt_style="compact")
    assert make_task(SAMPLE, config, kind="asr").prompt == COMPACT_ASR_GOLDEN
    assert make_task(SAMPLE, config, kind="msr").prompt == COMPACT_MSR_GOLDEN
    with pytest.raises(ValueError, match="unknown prompt_style 'fancy'"):
        TaskConfig(prompt_style="fancy")


@pytest.mark.parametrize("style", ["paper", "compact"])
def test_demonstration_answers_are_extracted_under_each_style(style):
    """The cold start's demonstration answers the tags every prompt style asks for."""
    from rlpt_jax.data.sft import rlpt_demonstrations

    for kind in ("asr", "msr"):
        task = make_task(SAMPLE, TaskConfig(prompt_style=style), kind=kind)
        assert S in task.prompt and E in task.prompt
        (conv,) = rlpt_demonstrations([task])
        assert extract_prediction(conv[-1]["content"]) == SAMPLE.target


def test_chat_rendering_golden():
    task = make_task(SAMPLE, TaskConfig(system_prompt="You are helpful."), chatml, kind="asr")
    assert task.prompt == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        f"<|im_start|>user\n{ASR_GOLDEN}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert task.messages[0] == {"role": "system", "content": "You are helpful."}
    with pytest.raises(TypeError, match="string"):
        make_task(SAMPLE, TaskConfig(), renderer=lambda m: [1, 2])


def test_task_choice_is_seeded_and_follows_lambda():
    samples = [Sample(f"d{i // 5}", i % 5 + 2, "c", "t", ("f",)) for i in range(4000)]
    config = TaskConfig(msr_lambda=1 / 3, seed=3)  # f = (1/3) / (4/3) = 0.25
    kinds = [t.kind for t in make_tasks(samples, config)]
    share = kinds.count("msr") / len(kinds)
    assert 0.22 < share < 0.28  # binomial sd ~0.007
    assert kinds == [task_kind(s, config) for s in reversed(samples)][::-1]
    other_seed = [task_kind(s, TaskConfig(msr_lambda=1 / 3, seed=4)) for s in samples]
    assert other_seed != kinds
    assert {task_kind(s, TaskConfig(msr_lambda=0.0)) for s in samples} == {"asr"}


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_effective_msr_weight_is_lambda(lam):
    """J = E_ASR[r] + λ·E_MSR[r] (RLPT v2): every sample's reward enters the loss with
    the same weight, so MSR's weight against ASR is the number of MSR samples per ASR
    sample in the task stream, which must be λ (in expectation; here over 40,000)."""
    config = TaskConfig(msr_lambda=lam)
    f = config.msr_fraction
    assert f / (1 - f) == pytest.approx(lam, rel=1e-12)
    samples = [Sample(f"doc{i // 8}", i % 8 + 2, "c", "t", ("f",)) for i in range(40_000)]
    kinds = [task_kind(s, config) for s in samples]
    msr, asr = kinds.count("msr"), kinds.count("asr")
    # sd of the ratio ≈ sqrt(f / (n (1-f)^3)) <= 0.009 for λ <= 0.9
    assert msr / asr == pytest.approx(lam, abs=0.03)


def test_paper_lambda_default_is_inside_the_papers_range():
    config = TaskConfig()
    assert 0 < config.msr_lambda < 1  # RLPT v2: λ in (0, 1)
    assert config.msr_fraction == pytest.approx(1 / 3)


def test_bad_task_inputs():
    with pytest.raises(ValueError, match="msr_lambda"):
        TaskConfig(msr_lambda=1.5)
    with pytest.raises(ValueError, match="msr_lambda"):
        TaskConfig(msr_lambda=-0.1)
    with pytest.raises(ValueError, match="unknown task kind 'qa'"):
        make_task(SAMPLE, TaskConfig(), kind="qa")
    with pytest.raises(ValueError, match=r"msr_template must contain \['next_segment'\]"):
        TaskConfig(msr_template=f"{{context}} {S} {E}")
    with pytest.raises(ValueError, match="asr_template must contain.*endofprediction"):
        TaskConfig(asr_template=f"{{context}} {S}")
    with pytest.raises(ValueError, match="double other braces"):
        TaskConfig(asr_template=f"{{context}} {{x}} {S} {E}")


def test_custom_template():
    config = TaskConfig(asr_template=f"Go on: {{context}} -> {S}...{E}")
    task = make_task(SAMPLE, config, kind="asr")
    assert task.prompt == f"Go on: {SAMPLE.context} -> {S}...{E}"


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"Reasoning...\n{S}Her notes were published.{E}", "Her notes were published."),
        (f"{S}\n  spaced answer \n{E} trailing talk", "spaced answer"),
        # Repeated: the last start tag wins (a draft, then the final answer).
        (f"{S}draft{E} wait, better: {S}final{E}", "final"),
        # The reasoning quotes the start tag before answering.
        (f"I will answer after {S} like this: {S}answer{E}", "answer"),
        # Missing tags.
        ("The next sentence is about 1843.", None),
        (f"only an end tag {E}", None),
        # Empty or blank.
        (f"{S}{E}", None),
        (f"{S}   \n {E}", None),
        # Truncated: the last start tag is never closed.
        (f"{S}Her notes were publi", None),
        (f"{S}old{E} then {S}cut off", None),
        # End tag before the start tag is not an answer.
        (f"{E}{S}x", None),
        ("", None),
    ],
)
def test_extract_prediction(text, expected):
    assert extract_prediction(text) == expected
