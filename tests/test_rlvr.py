"""RLVR: the answer check (math-verify in a worker, reasoning-gym scorers), the problem
sources, the method's reward and Pass@k evaluation, and a learning run through the loop."""

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from rlpt_jax.data import math_problems as mp
from rlpt_jax.data.jsonl import SkippedDataWarning
from rlpt_jax.metrics import read_jsonl
from rlpt_jax.rewards.math_verifier import (
    Check,
    MathVerifier,
    Verdict,
    VerifierConfig,
    VerifierUnavailableError,
    boxed_answer,
    math_reward,
)
from rlpt_jax.rollout.policy import Completion

ROOT = Path(__file__).resolve().parents[1]
COPY_TASK = "rg:chain_sum:min_terms=1,max_terms=1,max_digits=1"  # "7 =" -> 7
ADDITION = "rg:chain_sum:min_terms=2,max_terms=2,max_digits=1"


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(VerifierConfig(timeout_s=1, deadline_s=10.0))
    yield v
    v.close()


def _verdict(verifier, response: str, gold: str) -> Verdict:
    return verifier.check([Check(boxed_answer(response), gold)])[0]


# -- the verifier ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "response, gold",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}.", "0.5"),
        ("\\boxed{\\{1,2\\}}", "{2, 1}"),
        ("solving gives \\boxed{x=3}", "3"),
        ("\\boxed{-4}", "-4"),
    ],
)
def test_accepts_equivalent_forms_as_math_verify_does(verifier, response, gold):
    assert _verdict(verifier, response, gold) == Verdict(True, "math_verify")


@pytest.mark.parametrize(
    "response, gold",
    [
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("\\boxed{\\{1,3\\}}", "{2, 1}"),
        ("\\boxed{x=4}", "3"),
        ("\\boxed{7} wait, no: \\boxed{8}", "7"),  # the last box counts
    ],
)
def test_rejects_wrong_answers(verifier, response, gold):
    assert _verdict(verifier, response, gold) == Verdict(False, "math_verify")


def test_words_and_unparseable_answers_fall_back_to_strings(verifier):
    """math-verify reads "Monday" as a product of letters (any anagram would pass), so word
    answers are compared as normalised strings, and counted as such."""
    assert _verdict(verifier, "\\boxed{\\text{Monday}}", "monday") == Verdict(True, "string")
    assert _verdict(verifier, "\\boxed{yadnoM}", "Monday") == Verdict(False, "string")
    nested = "(" * 40 + "1" + ")" * 40  # math-verify's parser times out on it
    assert _verdict(verifier, f"\\boxed{{{nested}}}", "1") == Verdict(False, "string")


def test_no_box_and_format_penalty(verifier):
    verdict = _verdict(verifier, "the answer is 3", "3")
    assert verdict == Verdict(False, "no_answer")
    assert math_reward(verdict) == 0.0 and math_reward(verdict, format_penalty=-1.0) == -1.0
    assert math_reward(Verdict(False, "math_verify"), format_penalty=-1.0) == 0.0
    assert math_reward(Verdict(True, "math_verify"), format_penalty=-1.0) == 1.0


GARBAGE = [
    "",
    "\\boxed{}",
    "\\boxed{\\frac{",
    "\\boxed{\\frac{1}{0}}",
    "\\boxed{\x00\x01}",
    "\\boxed{\ud800 lone surrogate}",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10^{10}}}!}",
    "\\boxed{\\begin{pmatrix}1&2\\end{pmatrix}}",
    "\\boxed{\\sqrt{-1}^{\\infty}}",
    "\\boxed{" + "x+" * 400 + "x}",
    "\\boxed{" * 5000,
    "}" * 5000 + "\\boxed{3}",  # stray braces, then a right answer
]


def test_never_raises_and_rejects_garbage(verifier):
    verdicts = verifier.check([Check(boxed_answer(g), "3") for g in GARBAGE])
    assert len(verdicts) == len(GARBAGE)
    assert not any(v.correct for v in verdicts[:-1]), verdicts
    assert verdicts[-1] == Verdict(True, "math_verify")
    # garbage gold answers too
    verdicts = verifier.check([Check("3", boxed_answer(g) or g) for g in GARBAGE])
    assert all(isinstance(v, Verdict) for v in verdicts)


def _adversarial(size: int) -> list[str]:
    """Responses of ``size`` characters built to make a checker quadratic or slow."""
    return [
        "\\boxed{" * (size // 7),  # thousands of open boxes
        "\\boxed{" + "{" * (size - 9) + "}",  # one box, unbalanced inside
        "\\boxed{" + "1+" * (size // 2) + "1}",  # one huge box
        "\\boxed{1}" * (size // 9),  # many boxes, the last one tiny
        "\\\\{" * (size // 3),  # escapes
    ]


def test_linear_time_on_a_megabyte_of_adversarial_text(verifier):
    verifier.check([Check("1", "1")])  # the worker is up

    def seconds(size: int) -> float:
        start = time.perf_counter()
        verdicts = verifier.check([Check(boxed_answer(r), "1") for r in _adversarial(size)])
        assert [v.how for v in verdicts][2] == "too_long"
        assert all(v.how != "timeout" for v in verdicts)
        return time.perf_counter() - start

    one, four = seconds(1 << 20), seconds(4 << 20)
    assert one < 10.0, one
    assert four < 8 * one + 1.0, (one, four)  # quadratic would be 16x


def test_a_hung_check_costs_the_worker_not_the_run():
    """Past ``deadline_s`` the worker is killed: that answer is wrong, the next is checked."""
    v = MathVerifier(VerifierConfig(timeout_s=30, deadline_s=1.0))
    try:
        v.probe()
        slow = "(" * 40 + "1" + ")" * 40  # seconds in math-verify's parser
        start = time.perf_counter()
        out = v.check([Check(slow, "1"), Check("\\frac{2}{4}", "0.5")])
        assert time.perf_counter() - start < 10.0
        assert out == [Verdict(False, "timeout"), Verdict(True, "math_verify")]
        assert v.kills == 1
    finally:
        v.close()


def test_a_missing_math_verify_fails_at_start_up(monkeypatch):
    blocker = str(ROOT / "tests" / "torch_blocker")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([blocker, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RLPT_JAX_BLOCK_MODULES", "math_verify")
    with pytest.raises(VerifierUnavailableError, match="pip install -r requirements.txt"):
        MathVerifier().probe()


def test_reasoning_gym_problems_use_the_generators_scorer(verifier):
    (p,) = mp.generate_problems(mp.parse_source(ADDITION), seed=0, size=4, indices=[2])
    right = verifier.check([Check(p.answer, "ignored", p.generator)])[0]
    wrong = verifier.check([Check(str(int(p.answer) + 1), "ignored", p.generator)])[0]
    assert right == Verdict(True, "generator") and wrong == Verdict(False, "generator")


# -- problem sources -------------------------------------------------------------------
def test_source_strings():
    src = mp.parse_source("rg:chain_sum:min_terms=2,max_digits=1,allow_negation=True")
    assert src.generated and src.name == "chain_sum"
    assert src.options == (("min_terms", 2), ("max_digits", 1), ("allow_negation", True))
    with pytest.raises(ValueError, match="not key=value"):
        mp.parse_source("rg:chain_sum:min_terms")
    with pytest.raises(FileNotFoundError, match="neither an existing jsonl file"):
        mp.parse_source("/nope/problems.jsonl")
    with pytest.raises(ValueError, match="unknown reasoning-gym generator 'nope'"):
        mp.generate_problems(mp.parse_source("rg:nope"), 0, 4, [0])
    with pytest.raises(ValueError, match="bad options"):
        mp.generate_problems(mp.parse_source("rg:chain_sum:min_terms=0"), 0, 4, [0])


def test_jsonl_problems_skip_bad_lines_loudly(tmp_path):
    path = tmp_path / "aime.jsonl"
    lines = [
        json.dumps({"problem": "What is 1+1?", "answer": "2"}),
        json.dumps({"problem": "What is 2*3?", "answer": 6}),
        json.dumps({"problem": "No answer here"}),
        "not json",
        json.dumps({"problem": "Half of one?", "answer": "\\frac{1}{2}"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(SkippedDataWarning, match="skipped 2"):
        problems = mp.load_problem_jsonl(path)
    assert [p.answer for p in problems] == ["2", "6", "\\frac{1}{2}"]
    assert {p.source for p in problems} == {"aime"} and problems[0].generator is None


def test_heldout_problems_are_never_trained_on(tmp_path):
    """A small generator repeats questions: the held-out ones leave the training set."""
    data = mp.build_math_data([ADDITION], [], train_size=60, heldout=40, seed=3)
    train = {p.problem for p in data.train}
    (held,) = data.heldout.values()
    assert not train & {p.problem for p in held}
    assert len({p.problem for p in held}) == len(held)  # each question once
    assert len(data.train) + data.counts["train_dropped_heldout"] == 60
    assert data.counts["train_dropped_heldout"] > 0  # 200 distinct sums: repeats happen
    assert data.counts["heldout_chain_sum"] + data.counts["heldout_chain_sum_repeats"] == 40
    again = mp.build_math_data([ADDITION], [], train_size=60, heldout=40, seed=3)
    assert [p.problem for p in again.train] == [p.problem for p in data.train]  # seeded
    # a jsonl source gives up a seeded sample of lines; an eval-only file is all held out
    path = tmp_path / "math.jsonl"
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = mp.build_math_data([str(path)], [COPY_TASK], train_size=0, heldout=5, seed=0)
    assert len(data.train) == 15 and len(data.heldout["math"]) == 5
    assert not {p.problem for p in data.train} & {p.problem for p in data.heldout["math"]}
    assert "chain_sum" in data.heldout


# -- the method --------------------------------------------------------------------------
class _Tok:
    """Token ids are indices into the texts seen so far."""

    def __init__(self):
        self.texts: list[str] = []

    def encode(self, text):
        self.texts.append(text)
        return [len(self.texts) - 1]

    def decode(self, ids):
        return self.texts[ids[0]]


class AnswersThree:
    """A policy whose every sample says the answer is 3 (in the cpu variant's format)."""

    pad_id = 0

    def __init__(self):
        self.tokenizer = _Tok()

    def sample(self, prompts, n, spec, seed):
        ids = self.tokenizer.encode("3} because.")
        done = Completion(ids, np.zeros(1, np.float32), np.zeros(1, np.float32), "stop")
        return [[done] * n for _ in prompts]


def _method(**rlvr):
    from rlpt_jax.train.experiment import from_config_dict
    from rlpt_jax.train.methods import build_data

    config = {
        "method": "rlvr",
        "rlvr": {
            "train": [ADDITION],
            "train_size": 30,
            "heldout": 40,
            "instruction": "Box it.",
            "response_prefix": "\\boxed{",
            "pass_samples": 4,
            **rlvr,
        },
        "rollout": {"prompts_per_step": 6, "samples_per_prompt": 4},
        "eval": {"num_prompts": 25},
    }
    return build_data(from_config_dict(config), tokenizer=None, use_chat=False)


def test_reward_batch_and_pass_at_k_through_the_method():
    from rlpt_jax.rollout.policy import SampleSpec

    method = _method()
    try:
        assert method.train[0].prompt.endswith("\n\nBox it.\\boxed{")
        policy = AnswersThree()
        batch, m = method.next_batch(policy, SampleSpec(), seed=0, row_multiple=1)
        assert batch.tokens.shape[0] == 24 and m["verifier/generator"] == 24
        assert m["rollout/no_prediction"] == 0 and m["verifier/error"] == 0
        ev = method.evaluate(policy, None, None)
        (held,) = method.heldout.values()
        share = np.mean([t.problem.answer == "3" for t in held[:25]])
        # every sample alike: pass@k == pass@1 == the share of problems whose answer is 3
        for k in (1, 2, 4):
            assert ev.metrics[f"eval/pass@{k}"] == pytest.approx(share)
            assert ev.metrics[f"eval/pass@{k}_chain_sum"] == pytest.approx(share)
        assert len(ev.per_example["eval/pass@1"]) == 25
    finally:
        method.verifier.close()


# -- learning ------------------------------------------------------------------------
LEARN = """
import json, sys
from rlpt_jax.train import loop
loop.run(json.load(open(sys.argv[1])), sys.argv[2])
"""


def _synthetic_model(root: Path) -> Path:
    """A tiny random Llama with a word-level vocabulary in which each answer ``\\boxed{d}``
    is one token (a tiny model cannot learn LaTeX spelling in minutes); problem text
    outside the vocabulary reads as [UNK], the digits and "=" as themselves."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from hf_fixtures import tiny_llama_config
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.models.hf_io import export_hf

    words = ["<pad>", "</s>", "[UNK]", "=", "+", "-", "}", "\\boxed{"]
    words += [str(d) for d in range(10)] + [f"\\boxed{{{d}}}" for d in range(10)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True)
    tok.save(str(tok_dir / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "[UNK]"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return export_hf(init_model(tiny_llama_config(32), 0), root / "model", tokenizer_dir=tok_dir)


def test_rlvr_raises_a_tiny_models_reward_on_a_reasoning_gym_task(tmp_path):
    """method=rlvr through the training loop: reasoning-gym's chain_sum at its smallest
    (one one-digit term: "... problem: 7 =", answer 7), each answer checked by the
    generator's scorer in the verifier worker. A random model boxes the right digit about
    1 time in 30; GRPO must lift the mean reward above 0.6 within 3 minutes."""
    config = {
        "method": "rlvr",
        "model": {"path": str(_synthetic_model(tmp_path)), "dtype": "float32"},
        "chat_template": False,
        "rlvr": {"train": [COPY_TASK], "train_size": 100, "heldout": 0, "instruction": ""},
        "rollout": {
            "prompts_per_step": 16,
            "samples_per_prompt": 8,
            "max_new_tokens": 1,
            "max_prompt_tokens": 32,
            "cache_dtype": "float32",
        },
        "loss": {"kind": "ppo"},
        "optim": {"learning_rate": 3e-3, "weight_decay": 0.0},
        "train": {"steps": 200, "kl_to_init": False},
        "eval": {"every": 0, "num_prompts": 0},
        "checkpoint": {"save_every": 1000, "max_to_keep": 1, "async_save": False},
        "export_hf": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, like a laptop
    cmd = [sys.executable, "-c", LEARN, str(tmp_path / "config.json"), str(tmp_path / "run")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "reward/mean" in r]
    rewards = np.asarray([r["reward/mean"] for r in records])
    print(f"rlvr: reward {rewards[:3].round(2)} … {rewards[-5:].round(2)} in {elapsed:.0f}s")
    assert rewards[:3].mean() < 0.2
    assert rewards[-5:].mean() > 0.6, rewards.round(2)
    assert elapsed < 180
    last = records[-1]
    # every boxed answer went to the generator's scorer, and none failed
    assert last["verifier/generator"] + last["rollout/no_prediction"] == 128
    assert last["verifier/error"] == last["verifier/timeout"] == 0


# -- end to end ----------------------------------------------------------------------
@pytest.mark.slow
def test_cpu_recipe_trains_and_eval_prints_pass_at_k(tmp_path):
    """The tiny variant of configs/rlvr_qwen.py through launch/train.py (2 steps), then
    launch/eval.py on its export: Pass@1 and Pass@k of the held-out problems."""
    env = {**os.environ, "XLA_FLAGS": ""}
    run = tmp_path / "rlvr"
    train = [
        sys.executable,
        "launch/train.py",
        "--config=configs/rlvr_qwen.py:tiny",
        f"--workdir={run}",
    ]
    proc = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    last = read_jsonl(run / "metrics.jsonl")[-1]
    for key in ("reward/mean", "verifier/generator", "train/loss", "eval/pass@1", "eval/pass@2"):
        assert key in last, (key, sorted(last))
    assert (run / "hf_export" / "model.safetensors").is_file()
    evaluate = [
        sys.executable,
        "launch/eval.py",
        "--config=configs/rlvr_qwen.py:tiny",
        f"--model={run / 'hf_export'}",
        "--limit=2",
    ]
    out = subprocess.run(evaluate, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    printed = dict(line.split() for line in out.stdout.splitlines() if line.startswith("eval/"))
    assert {"eval/pass@1", "eval/pass@2", "eval/pass@1_chain_sum"} <= set(printed)
    assert 0.0 <= float(printed["eval/pass@1"]) <= float(printed["eval/pass@2"]) <= 1.0
