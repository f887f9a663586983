"""The papers' prompts as the configs wire them: AT²PO's Fig. 6 prompt (golden, rendered
with the real Qwen3 chat template) and the RLPT prompt styles of every variant. The RLPT
prompt goldens themselves are in test_tasks.py (ASR, MSR) and test_judges.py (the
generative judge), each citing the RLPT v2 prompt it follows (spec/rlpt.md, "Prompt
structure"; the spec gives no section numbers, so none is cited)."""

from __future__ import annotations

import pytest
from test_configs import VARIANTS, _module

from rlpt_jax.models.tokenizer import Tokenizer, qwen3_tokenizer_dir
from rlpt_jax.rollout.at2po import as_question, prompt_ids
from rlpt_jax.train.experiment import from_config_dict

AT2PO = _module("at2po_qwen")
RLPT = _module("rlpt_qwen")
# The paper's search-QA variants (cpu/tiny keep their cold-start prompt; the math_python
# agents, [ours], have their own tool protocol and prompt: tests/test_math_agent.py).
PAPER_AT2PO = [
    v
    for v in VARIANTS["at2po_qwen"]
    if v not in ("cpu", "cpu_pairs", "tiny") and not (v or "").startswith("math_")
]

# AT²PO (arXiv 2601.04767), Fig. 6, laid out as the reference code's data preparation
# does (data_process/hotpotqa_multihop_train.py): one system message, chat template with
# the generation prompt. It asks to solve the question step by step with a Wikipedia
# search tool, thinking first; to search as often as needed; names the four tag pairs;
# shows an example tag sequence ending in "The final answer is \[ \boxed{...} \]";
# demands the exact answer in \boxed{}; then the question, stripped, with "?" appended
# (spec/at2po.md, "Prompt").
FIG6_GOLDEN = (
    "<|im_start|>system\n"
    "You answer questions step by step with the help of a Wikipedia search tool: first "
    "think the question through, then answer it. While thinking you may search Wikipedia "
    "for facts about specific topics, as many times as you need. Write your reasoning "
    "inside <think> </think> and your answer inside <answer> </answer>; write each search "
    "query inside <search> </search>, and its results will come back inside <result> "
    "</result>. For example: <think> your reasoning </think> <search> a query </search> "
    "<result> what the search found </result> <think> more reasoning </think> <answer> "
    "The final answer is \\[ \\boxed{your answer} \\] </answer>. Always give the exact "
    "final answer inside \\boxed{} in LaTeX.\n"
    "\n"
    "Question: who wrote the play hamlet?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def qwen3():
    return Tokenizer(qwen3_tokenizer_dir())


# AT²PO Fig. 6 (structure; our wording) in the reference code's layout: FIG6_GOLDEN above.
def test_fig6_prompt_golden(qwen3):
    ids = prompt_ids(qwen3, True, "  who wrote the play hamlet \n", AT2PO.PAPER_PROMPT)
    assert qwen3.decode(ids) == FIG6_GOLDEN
    assert ids == qwen3.encode(FIG6_GOLDEN)


# The reference code's data preparation (data_process/hotpotqa_multihop_train.py): the
# question is stripped and "?" appended when missing (spec/at2po.md, "Prompt").
@pytest.mark.parametrize(
    "raw, shown",
    [("Who wrote Hamlet", "Who wrote Hamlet?"), (" Who wrote Hamlet? ", "Who wrote Hamlet?")],
)
def test_question_is_stripped_and_ends_in_a_question_mark(raw, shown):
    assert as_question(raw) == shown


# AT²PO Fig. 6 as plain text ([ours]: chat_template=False, a tokenizer without a chat
# template): the same system text and question, no chat markup.
def test_fig6_prompt_without_a_chat_template(qwen3):
    text = qwen3.decode(prompt_ids(qwen3, False, "who wrote hamlet", AT2PO.PAPER_PROMPT))
    assert text.startswith("You answer questions step by step")
    assert text.endswith("\n\nQuestion: who wrote hamlet?\n")


def test_compact_prompt_is_a_system_and_a_user_message(qwen3):
    """The CPU variants' layout, which their cold-start demonstrations are written in
    ([ours]: not a paper prompt)."""
    expected = qwen3.render_chat(
        [
            {"role": "system", "content": AT2PO.SYSTEM_PROMPT},
            {"role": "user", "content": "who wrote hamlet"},
        ]
    )
    assert qwen3.decode(prompt_ids(qwen3, True, "who wrote hamlet", AT2PO.SYSTEM_PROMPT)) == (
        expected
    )


# AT²PO Fig. 6 prompt; response cap only (AT²PO, training recipe: 6192 tokens; ref code:
# ATPO/scripts/ATPO_qwen3_4B.sh MAX_RESPONSE_LENGTH); think and tool-limit format rules
# (ref code: deep_research_em.py validate_format, vllm_rollout_with_tools_tree_offline.py);
# generation stops only at </search> and EOS (ref code; spec/at2po.md, "Prompt").
@pytest.mark.parametrize("variant", PAPER_AT2PO)
def test_at2po_paper_variants_follow_the_paper_and_reference(variant):
    exp = from_config_dict(AT2PO.get_config(variant))
    assert exp.qa.system_prompt == AT2PO.PAPER_PROMPT
    assert exp.tree.max_turn_tokens is None  # only the 6192-token response cap
    assert exp.env.require_think and exp.env.over_limit_invalid
    assert exp.env.stop_strings == ("</search>",)  # the EOS after </answer> is trained


@pytest.mark.parametrize("variant", ["cpu", "cpu_pairs", "tiny"])
def test_at2po_cpu_variants_keep_their_cold_start_prompt(variant):
    exp = from_config_dict(AT2PO.get_config(variant))
    assert exp.qa.system_prompt == AT2PO.SYSTEM_PROMPT
    assert "{question}" not in exp.qa.system_prompt


# RLPT v2's printed ASR, MSR and judge prompts (spec/rlpt.md, "Prompt structure") and its
# objective J = E_ASR[r] + lambda * E_MSR[r], lambda in (0, 1) (spec/rlpt.md, "Two tasks").
@pytest.mark.parametrize("variant", VARIANTS["rlpt_qwen"])
def test_rlpt_variants_use_the_paper_prompts_and_lambda(variant):
    exp = from_config_dict(RLPT.get_config(variant))
    assert (exp.tasks.prompt_style, exp.judge.prompt_style) == ("paper", "paper")
    assert 0 < exp.tasks.msr_lambda < 1  # RLPT v2: lambda in (0, 1)
