"""README's "General benchmarks" recipe: EleutherAI's lm-evaluation-harness (``lm_eval``) on a
folder written by our exporter, on a tiny local multiple-choice task (offline).

The check is independent of lm-eval's arithmetic: every log-likelihood it logs for a
(question, choice) pair must equal the sum of the continuation's token log-probs computed by
the rlpt_jax model (the one in memory, before export) from the same token split lm-eval
uses, and its ``acc`` / ``acc_norm`` must be the ones those log-likelihoods give. A weight
or tokenizer file lost or mangled by the export, or a config field transformers reads
differently from us (rope, norm eps, tied embeddings), moves the log-likelihoods.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TASK = "rlpt_tiny_mc"

# One-word answers, so that the ranking of the choices depends on the model and not mostly
# on how many tokens each choice has.
QUESTIONS = [
    ("What is the capital of France?", ["Paris", "London", "Berlin", "Rome"], 0),
    ("Which planet is known as the red planet?", ["Venus", "Mars", "Jupiter", "Saturn"], 1),
    ("What colour is a clear daytime sky?", ["green", "red", "blue", "black"], 2),
    ("How many legs does a spider have?", ["six", "four", "ten", "eight"], 3),
    ("Which animal barks?", ["dog", "cat", "cow", "fish"], 0),
    ("What do bees make?", ["milk", "honey", "silk", "wax"], 1),
]

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _setup_stamp_is_current() -> bool:
    """Whether ``scripts/setup.sh --test`` ran with the current requirement files (its stamp,
    computed as the script does), as it just did in CI."""
    stamp = ROOT / ".setup-stamp-test"
    files = [  # in the order setup.sh --test hashes them
        "requirements.txt",
        "requirements-assets.txt",
        "pyproject.toml",
        "requirements-test.txt",
    ]
    digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in files)).hexdigest()
    return stamp.is_file() and stamp.read_text().strip() == digest


def _require_lm_eval() -> None:
    """Skip where ``.venv`` predates the lm-eval pin (setup.sh has not run since); fail where
    setup.sh --test ran with the current requirements and lm_eval is still missing."""
    if importlib.util.find_spec("lm_eval") is not None:
        return
    if _setup_stamp_is_current():
        pytest.fail("lm_eval is not importable although setup.sh --test is up to date")
    pytest.skip("lm-eval (a test extra) is not installed: bash scripts/setup.sh --test")


def _sharpen(model, scale: float = 10.0, seed: int = 0):
    """Weights far from a uniform model. At the default init (std 0.02) every next token
    scores about -log V whatever the weights, attention is uniform and position (rope)
    barely matters, so an export that got a weight or a config field wrong would still
    match to 1e-4. Scaling the projections (not the embeddings) and drawing the norm
    weights around 1 gives peaked attention and logits; then it would not."""
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        x = np.asarray(var.get_value())
        if path[-1] == "weight":  # RMSNorm
            x = x * (1 + 0.3 * rng.standard_normal(x.shape)) * (scale if path[0] == "norm" else 1)
        elif path[0] != "embed_tokens":
            x = x * scale
        var.set_value(jnp.asarray(x, var.get_value().dtype))
    nnx.update(model, state)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random Llama with the embedded SmolLM2 tokenizer, in memory and as the
    Hugging Face folder (``hf_export``) that our exporter writes."""
    _require_lm_eval()
    from hf_fixtures import tiny_smollm2_config
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.models.embedded import smollm2_dir
    from rlpt_jax.models.hf_io import export_hf

    cfg = tiny_smollm2_config()
    model = _sharpen(init_model(cfg, 0))
    out = tmp_path_factory.mktemp("run") / "hf_export"
    export_hf(model, out, tokenizer_dir=smollm2_dir())
    return model, out


def _run_lm_eval(export: Path, tmp: Path) -> tuple[dict, list[dict], float]:
    data = tmp / "tiny_mc.jsonl"
    with data.open("w") as f:
        for q, choices, answer in QUESTIONS:
            f.write(json.dumps({"question": q, "choices": choices, "answer": answer}) + "\n")
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data))
    out = tmp / "lm_eval_out"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp / "hf_datasets"),
    )
    cmd = [
        sys.executable, "-m", "lm_eval", "run",
        "--model", "hf",
        "--model_args", f"pretrained={export},dtype=float32",
        "--tasks", TASK,
        "--include_path", str(tasks),
        "--device", "cpu",
        "--batch_size", "4",
        "--output_path", str(out),
        "--log_samples",
    ]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    (results_file,) = out.rglob("results_*.json")
    (samples_file,) = out.rglob(f"samples_{TASK}_*.jsonl")
    results = json.loads(results_file.read_text())["results"][TASK]
    samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line]
    return results, samples, seconds


def _our_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """sum log p(continuation | context) with lm-eval's split for causal models
    (``TemplateLM._encode_pair``): trailing spaces of the context move to the continuation,
    the whole string is encoded once, and the continuation is what follows the context's
    own encoding. Encoding adds special tokens as transformers' default does."""
    from rlpt_jax.models.lm_eval import nll_per_token

    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation, add_special=True)
    ctx = tok.encode(context, add_special=True)
    assert whole[: len(ctx)] == ctx and len(whole) > len(ctx)
    nll = nll_per_token(model, [whole], tok.pad_id)[0]  # nll[i]: token i + 1 given ≤ i
    return -float(nll[len(ctx) - 1 :].sum())


def test_lm_eval_scores_an_export_as_the_model_does(exported, tmp_path):
    from rlpt_jax.models.embedded import smollm2_dir
    from rlpt_jax.models.tokenizer import Tokenizer

    model, export = exported
    results, samples, seconds = _run_lm_eval(export, tmp_path)
    print(f"lm_eval on {len(QUESTIONS)} questions: {seconds:.1f} s; {results}")
    assert sorted(s["doc_id"] for s in samples) == list(range(len(QUESTIONS)))

    tok = Tokenizer(smollm2_dir())  # the source tokenizer, not the exported copy
    acc, acc_norm, worst, margin = [], [], 0.0, np.inf
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        q, choices, answer = QUESTIONS[s["doc_id"]]
        context = f"Question: {q}\nAnswer:"
        # lm-eval's requests: (context, target_delimiter + choice) for every choice, logged
        # as {"gen_args_<i>": {"arg_0": context, "arg_1": continuation}}
        args = [s["arguments"][f"gen_args_{i}"] for i in range(len(s["arguments"]))]
        assert [(a["arg_0"], a["arg_1"]) for a in args] == [(context, " " + c) for c in choices]
        theirs = np.array([float(r[0]) for r in s["filtered_resps"]])  # (ll, is_greedy)
        ours = np.array([_our_loglikelihood(model, tok, context, " " + c) for c in choices])
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
        worst = max(worst, float(np.abs(theirs - ours).max()))
        acc.append(float(np.argmax(ours) == answer))
        norm = ours / np.array([len(c) for c in choices])  # acc_norm: per character
        acc_norm.append(float(np.argmax(norm) == answer))
        # neither ranking may hang on a difference below the tolerance
        margin = min(margin, *(np.diff(np.sort(x))[-1] for x in (ours, norm)))
        assert s["acc"] == acc[-1] and s["acc_norm"] == acc_norm[-1]
    print(f"largest |lm-eval - ours|: {worst:.2e}; smallest top-2 margin: {margin:.3f}")
    assert margin > 1e-3
    assert results["acc,none"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert results["acc_norm,none"] == pytest.approx(np.mean(acc_norm), abs=1e-12)
