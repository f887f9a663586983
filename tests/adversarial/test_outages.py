"""Outages of the services a run depends on (issue 21): the retriever, the judge, and the
checkpoint folder.

The outage policy (``config.outage``): a leaf whose search failed in the retriever is
masked, not trained as a −1; a step with more than ``max_failure_fraction`` failed
requests is skipped and counted; ``max_failed_steps`` of them in a row save a checkpoint
and stop the run with an error naming the service's URL and the failure counts.

The unit tests drive the real rollout, credit and methods with a scripted policy (every
chain searches once, then answers). The end-to-end tests run the training loop of the
AT²PO ``tiny`` variant in a subprocess against a local Search-R1-compatible server, with
the sampler replaced by the same script: the tiny model never completes a search within
its budget, so without the script no request would reach the retriever.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from scripted_engine import TextTokenizer

from rlpt_jax.algos.tree_credit import CreditConfig
from rlpt_jax.checkpoint import MANIFEST, verify_manifest
from rlpt_jax.data.qa import QAExample
from rlpt_jax.envs.search import Passage
from rlpt_jax.envs.search_env import SearchEnv
from rlpt_jax.metrics import read_jsonl
from rlpt_jax.rollout.at2po import at2po_rollout
from rlpt_jax.rollout.policy import SampleSpec
from rlpt_jax.rollout.tree import TreeConfig, TurnSample
from rlpt_jax.train import methods
from rlpt_jax.train.experiment import OutageConfig, from_config_dict

ROOT = Path(__file__).resolve().parents[2]
SEARCH = "<think> I look it up. </think>\n<search> capital of France </search>"
ANSWERS = ("Paris", "Berlin")
# Two chains search and answer; one expansion re-runs a first turn (the only inner
# nodes), so the third leaf makes a second backend call of its own.
TREE = TreeConfig(num_chains=2, rounds=1, picks=1, expansion="entropy", max_response_tokens=64)
QUESTION = QAExample("q1", "What is the capital of France?", ("Paris",), "toy")


# -- a scripted policy ---------------------------------------------------------------------


class _ScriptedEngine:
    """Rows search in their first turn and answer after a tool result: Paris on even
    rows, Berlin on odd ones. Works with any tokenizer (the real one end to end)."""

    def __init__(self, tok):
        self.tok = tok
        self.length: dict[int, int] = {}  # tokens in the row
        self.result_at: dict[int, int | None] = {}  # where its first tool output starts

    def _new(self, length, result_at):
        row = len(self.length)
        self.length[row], self.result_at[row] = length, result_at
        return row

    def start(self, prompts):
        return [self._new(len(p), None) for p in prompts]

    def fork(self, requests):
        return [self.fork_one(*r) for r in requests]

    def fork_one(self, row, length, m):
        at = self.result_at[row]
        at = at if at is not None and at < length else None  # the result is in the prefix
        return [self._new(length, at) for _ in range(m)]

    def extend(self, rows, tokens):
        for row, toks in zip(rows, tokens):
            if self.result_at[row] is None:
                self.result_at[row] = self.length[row]
            self.length[row] += len(toks)

    def release(self, rows):
        pass

    def generate(self, rows, max_new_tokens):
        out = []
        for row in rows:
            if self.result_at[row] is None:
                text, finish = SEARCH, "stop"
            else:
                gold = ANSWERS[row % 2]
                text, finish = f"<think> ok </think>\n<answer> \\boxed{{{gold}}} </answer>", "eos"
            ids = self.tok.encode(text)
            self.length[row] += len(ids)
            out.append(TurnSample(ids, [-1.0] * len(ids), [1.0] * len(ids), finish))
        return out

    def counters(self):
        return {"prefilled_tokens": 0, "decoded_tokens": 0}


class _ScriptedPolicy:
    use_chat_template = False
    pad_id = 0

    def __init__(self):
        self.tokenizer = TextTokenizer()

    def engine(self, spec, seed):
        return _ScriptedEngine(self.tokenizer)


class _Retriever:
    """A search backend whose calls listed in ``fail`` (1-based) raise, like a
    :class:`rlpt_jax.envs.search.RetrievalError` after the client's retries."""

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.calls = 0

    def search(self, queries, topk):
        self.calls += 1
        if self.calls in self.fail:
            raise ConnectionError(f"call {self.calls}: connection refused")
        return [[Passage("France", "Paris is the capital of France.", 1.0)] for _ in queries]


def _rollout(env, credit: CreditConfig | None = None):
    credit = credit or CreditConfig()
    return at2po_rollout(
        _ScriptedPolicy(), env, [QUESTION], TREE, credit, SampleSpec(), None, -1.0, 0
    )


# -- the rollout masks what the retriever broke ------------------------------------------


def test_a_failed_search_is_masked_not_trained_as_a_format_failure():
    """Before: the leaf whose search failed kept its −1 and its tokens in the loss, and its
    −1 entered its tree's normalised rewards: the two answered leaves got +1.22 and 0.0
    instead of +1 and −1."""
    out = _rollout(SearchEnv(_Retriever(fail={2})))  # call 2: the expansion's search
    tree = out.trees[0]
    leaves = tree.leaves()
    outcomes = [tree.nodes[leaf].outcome for leaf in leaves]
    assert sorted(outcomes) == ["answer", "answer", "tool_error"]
    mask = np.asarray(out.batch.loss_mask)
    adv = np.asarray(out.batch.advantages)
    failed = outcomes.index("tool_error")
    assert mask[failed].sum() == 0 and not adv[failed].any()
    # The rest is credited as a two-leaf tree, Paris (1) against Berlin (0): z = ±1.
    for row, leaf in enumerate(leaves):
        if row == failed:
            continue
        expected = 1.0 if tree.nodes[leaf].reward == 1.0 else -1.0
        np.testing.assert_allclose(adv[row][mask[row] > 0], expected, atol=1e-5)
    assert out.metrics["outage/masked_leaves"] == 1.0


def test_the_vanilla_ablation_masks_the_failed_leaf_too():
    out = _rollout(SearchEnv(_Retriever(fail={2})), CreditConfig(advantage="vanilla"))
    tree = out.trees[0]
    mask, adv = np.asarray(out.batch.loss_mask), np.asarray(out.batch.advantages)
    for row, leaf in enumerate(tree.leaves()):
        reward, outcome = tree.nodes[leaf].reward, tree.nodes[leaf].outcome
        expected = 0.0 if outcome == "tool_error" else (1.0 if reward == 1.0 else -1.0)
        assert (mask[row].sum() == 0) == (outcome == "tool_error")
        np.testing.assert_allclose(adv[row][mask[row] > 0], expected, atol=1e-5)


def test_a_tree_whose_searches_all_failed_is_not_trained_on():
    out = _rollout(SearchEnv(_Retriever(fail={1, 2})))
    assert np.asarray(out.batch.loss_mask).sum() == 0
    assert out.metrics["outage/masked_leaves"] == 3.0


# -- the method skips a step the retriever failed --------------------------------------------


def _at2po_method(backend, **outage):
    exp = from_config_dict(
        {
            "method": "at2po",
            "tree": {"num_chains": 2, "rounds": 1, "picks": 1, "max_response_tokens": 64},
            "rollout": {"prompts_per_step": 1},
            "outage": outage,
        }
    )
    method = methods.AT2POMethod.__new__(methods.AT2POMethod)
    method.exp, method.env = exp, SearchEnv(backend, exp.env)
    method.math = None  # exact-match QA
    method.train_questions = [QUESTION]
    method.stream = methods.pipeline.IndexStream(1, 0)
    return method


def test_a_step_with_too_many_failed_searches_is_not_trained_on():
    """Before: the step trained on, every failed leaf scored −1 (exit 0 after a whole run
    of them)."""
    method = _at2po_method(_Retriever(fail={1}))  # the chains' 2 of 3 searches fail
    with pytest.raises(methods.ServiceOutage) as err:
        method.next_batch(_ScriptedPolicy(), SampleSpec(), 0, 1)
    outage = err.value
    assert (outage.service, outage.failures, outage.requests) == ("retriever", 2, 3)
    assert "call 1: connection refused" in str(outage)
    assert outage.metrics["outage/retriever_failures"] == 2.0
    assert method.stream.position == 1  # the step's question is consumed, not retried


def test_a_step_below_the_failure_fraction_trains_and_counts():
    method = _at2po_method(_Retriever(fail={2}))  # 1 of 3 searches fails
    batch, m = method.next_batch(_ScriptedPolicy(), SampleSpec(), 0, 1)
    assert (m["outage/retriever_requests"], m["outage/retriever_failures"]) == (3.0, 1.0)
    assert m["outage/masked_leaves"] == 1.0
    assert np.asarray(batch.loss_mask).sum() > 0
    strict = _at2po_method(_Retriever(fail={2}), max_failure_fraction=0.0)
    with pytest.raises(methods.ServiceOutage):
        strict.next_batch(_ScriptedPolicy(), SampleSpec(), 0, 1)


# -- evaluation: an outage is not a score -------------------------------------------------


def _evaluating(backend):
    method = _at2po_method(backend)
    method.eval_sets, method.stop_strings = {"toy": [QUESTION]}, ()
    return method


def test_an_evaluation_against_a_dead_retriever_withholds_its_scores():
    """Before: the evaluation reported EM 0 for a policy that never saw a search result, a
    number about the outage that the summary, the best checkpoint and compare.py took for
    the policy's, with no sign of the failures."""
    method = _evaluating(_Retriever(fail=range(1, 99)))
    with pytest.warns(RuntimeWarning, match=r"retriever .*: 1 of 1 requests failed"):
        ev = method.evaluate(_ScriptedPolicy(), None, None)
    assert np.isnan(ev.metrics["eval/em_toy"]) and np.isnan(ev.metrics["eval/em_avg"])
    assert ev.per_example == {}
    assert ev.metrics["eval/retriever_requests"] == ev.metrics["eval/retriever_failures"] == 1


def test_an_evaluation_with_a_live_retriever_scores_and_counts(recwarn):
    ev = _evaluating(_Retriever()).evaluate(_ScriptedPolicy(), None, None)
    # the script's chain answers after its search (which of its answers: by row parity)
    assert ev.metrics["eval/format_ok_toy"] == 1.0 and len(ev.per_example["eval/em_toy"]) == 1
    assert (ev.metrics["eval/retriever_requests"], ev.metrics["eval/retriever_failures"]) == (1, 0)
    assert not [w for w in recwarn if "withheld" in str(w.message)]


def test_an_evaluation_against_a_dead_judge_withholds_its_scores_not_the_nll():
    """Before: ``JudgeUnavailableError`` from the held-out judging ended the run."""
    from rlpt_jax.data.segments import Sample
    from rlpt_jax.data.tasks import TaskConfig, make_task
    from rlpt_jax.rewards.judges import make_judge

    exp = from_config_dict(
        {
            "judge": {
                "kind": "http",
                "http": {"base_url": _dead_url(), "model": "j", "max_retries": 0},
            }
        }
    )
    method = methods.RLPTMethod.__new__(methods.RLPTMethod)
    method.exp, method.judge, method.stop_strings = exp, make_judge(exp.judge), ()
    task = make_task(Sample("d", 2, "First.", "Second.", ("Third.",)), TaskConfig())
    method.data = type("Data", (), {"heldout_tasks": [task, task], "heldout_docs": []})()
    with pytest.warns(RuntimeWarning, match=r"judge .*: 2 of 2 requests failed"):
        ev = method.evaluate(_JudgePolicy(), None, None)
    assert "eval/next_segment_acc" not in ev.metrics and ev.per_example == {}
    assert ev.metrics["eval/judge_failures"] == 2


def test_a_retriever_down_while_building_cold_start_demonstrations_stops_the_run(monkeypatch):
    """Demonstrations are built once: there is no step to skip. Before: every failed
    search silently dropped its demonstration, and the run died later with "no SFT
    example fits sft.seq_len", which points at the wrong setting."""
    monkeypatch.setattr(methods, "make_search_backend", lambda exp: _Retriever(range(1, 999)))
    exp = from_config_dict(
        {
            "method": "sft",
            "sft": {"data": "at2po", "max_examples": 4, "heldout": 2},
            "search": {"backend": "http", "url": "http://retriever:8000"},
        }
    )
    with pytest.raises(methods.OutageError, match="train demonstrations.*retriever:8000: 4 of 4"):
        methods.SFTMethod(exp, TextTokenizer(), use_chat=False)


def test_outage_config_is_validated():
    from rlpt_jax.train.experiment import ExperimentConfigError

    with pytest.raises(ExperimentConfigError, match="max_failure_fraction"):
        OutageConfig(max_failure_fraction=1.0)
    with pytest.raises(ExperimentConfigError, match="max_failed_steps"):
        OutageConfig(max_failed_steps=0)


# -- the judge follows the same policy ---------------------------------------------------


class _JudgePolicy:
    """Samples one tagged prediction per completion, so every item reaches the judge."""

    def __init__(self):
        from rlpt_jax.data.tasks import END_TAG, START_TAG

        self.tokenizer = TextTokenizer()
        self.text = f"{START_TAG} The cat slept. {END_TAG}"
        self.pad_id = 0

    def sample(self, prompts, n, spec, seed):
        from rlpt_jax.rollout.policy import Completion

        ids = self.tokenizer.encode(self.text)
        done = Completion(ids, np.zeros(1, np.float32), np.zeros(1, np.float32), "stop")
        return [[done] * n for _ in prompts]


def test_an_unavailable_judge_fails_the_step_like_the_retriever():
    """Before: ``JudgeUnavailableError`` ended the run at once, with no checkpoint of the
    steps since the last save; now it is one skipped step of the same outage policy."""
    from rlpt_jax.data.segments import Sample
    from rlpt_jax.data.tasks import TaskConfig, make_task
    from rlpt_jax.rewards.judges import make_judge

    url = _dead_url()
    exp = from_config_dict(
        {
            "judge": {"kind": "http", "http": {"base_url": url, "model": "j", "max_retries": 0}},
            "rollout": {"prompts_per_step": 1, "samples_per_prompt": 2},
        }
    )
    method = methods.RLPTMethod.__new__(methods.RLPTMethod)
    method.exp, method.judge = exp, make_judge(exp.judge)
    task = make_task(Sample("d", 2, "First.", "Second.", ("Third.",)), TaskConfig())
    method.data = type("Data", (), {"train_tasks": [task]})()
    method.stream = methods.pipeline.IndexStream(1, 0)
    with pytest.raises(methods.ServiceOutage) as err:
        method.rollout(_JudgePolicy(), SampleSpec(max_new_tokens=4), 0, 1)
    outage = err.value
    assert outage.service == "judge" and (outage.failures, outage.requests) == (2, 2)
    assert outage.url == f"{url}/v1/chat/completions"
    assert outage.metrics["outage/judge_failures"] == 2.0


def _dead_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- the loop stops after too many failed steps ------------------------------------------------


def _counts(failures: int, requests: int) -> dict[str, float]:
    return methods.service_counts("retriever", failures, requests)


def test_consecutive_skipped_steps_end_the_run_with_the_url_and_counts():
    from rlpt_jax.train.loop import _OutageTracker

    tracker = _OutageTracker(OutageConfig(max_failed_steps=2))
    down = methods.ServiceOutage("retriever", "http://r:8000", "HTTP 503", _counts(3, 3))
    assert tracker.skip(4, down) is False
    tracker.passed()  # a good step in between starts the count again
    assert tracker.skip(6, down) is False
    assert tracker.skip(7, methods.ServiceOutage("retriever", "http://r:8000", None, _counts(2, 4)))
    message = str(tracker.error(Path("/run/checkpoints/7")))
    assert "retriever http://r:8000" in message
    assert "step 6: 3/3, step 7: 2/4" in message and "step 4" not in message
    assert "HTTP 503" not in message  # the last step's error is the one shown
    assert "/run/checkpoints/7" in message and "rerun the same command" in message


# -- end to end: the AT²PO tiny loop against a local retriever -------------------------------


class _SearchR1Server:
    """A loopback Search-R1 ``POST /retrieve`` server. ``fail(n, queries)`` decides whether
    request ``n`` (1-based, the start-up probe included) answers HTTP 503."""

    def __init__(self, fail):
        self.failed = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            requests = 0

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                Handler.requests += 1
                if fail(Handler.requests, body["queries"]):
                    outer.failed += 1
                    self.send_error(503, "index unavailable")
                    return
                hit = {"document": {"contents": '"France"\nParis is the capital.'}, "score": 1.0}
                data = json.dumps({"result": [[hit] for _ in body["queries"]]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# The training loop with the sampler replaced by the scripted engine (see module docstring).
DRIVER = """
import json, sys
sys.path[:0] = [sys.argv[3], sys.argv[4]]
import test_outages
from rlpt_jax.rollout.policy import Policy
from rlpt_jax.train import loop

Policy.engine = lambda self, spec, seed: test_outages._ScriptedEngine(self.tokenizer)
loop.run(json.loads(sys.argv[1]), sys.argv[2])
"""


def _tiny_at2po(url: str, steps: int, retries: int, **outage) -> dict:
    """The AT²PO tiny variant on the retriever at ``url``: no cold start (the script plays
    the policy), no evaluation questions, no export, forced checkpoints only."""
    sys.path.insert(0, str(ROOT / "configs"))
    import at2po_qwen

    cfg = at2po_qwen.get_config("tiny").to_dict()
    cfg["cold_start"] = None
    cfg["search"].update(backend="http", url=url, retries=retries, timeout_s=5.0)
    cfg["tree"].update(max_turn_tokens=None, max_response_tokens=256)
    cfg["train"].update(steps=steps, kl_to_init=False)
    cfg["eval"].update(num_prompts=0, at_start=False)
    cfg["checkpoint"].update(save_every=1000)
    cfg["export_hf"] = False
    cfg["outage"].update(outage)
    return cfg


def _train(cfg: dict, workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    here = Path(__file__).parent  # this module, and tests/ for scripted_engine
    cmd = [sys.executable, "-c", DRIVER, json.dumps(cfg), str(workdir), str(here), str(here.parent)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _checkpoint_step(workdir: Path, step: int) -> dict:
    """The resume data of checkpoint ``step``, after checking its manifest."""
    step_dir = workdir / "checkpoints" / str(step)
    assert (step_dir / MANIFEST).is_file() and verify_manifest(step_dir) is None
    return json.loads((step_dir / "extra" / "metadata").read_text())


@pytest.mark.slow
def test_dead_retriever_stops_the_run_with_its_url_and_counts_and_a_checkpoint(tmp_path):
    """The retriever answers the start-up probe, then fails every search (HTTP 503).
    Before: exit 0, every search leaf trained as −1."""
    server = _SearchR1Server(fail=lambda n, queries: queries != ["probe"])
    try:
        cfg = _tiny_at2po(server.url, steps=4, retries=1, max_failed_steps=2)
        proc = _train(cfg, tmp_path)
        assert proc.returncode != 0, proc.stdout[-2000:]
        assert "OutageError" in proc.stderr, proc.stderr[-4000:]
        assert f"retriever {server.url} is unavailable" in proc.stderr
        assert "step 1: 3/3, step 2: 3/3" in proc.stderr
        assert "HTTP 503" in proc.stderr and "rerun the same command" in proc.stderr
        records = read_jsonl(tmp_path / "metrics.jsonl")
        assert [r["outage/skipped_steps"] for r in records] == [1.0, 1.0]
        assert all("train/loss" not in r for r in records)
        assert _checkpoint_step(tmp_path, 2) == {"step": 2, "data_position": 2, "seed": 0}

        # The checkpoint resumes: the rerun restores step 2 and stops again after 4.
        proc = _train(cfg, tmp_path)
        assert "resumed from step 2 (data position 2)" in proc.stdout, proc.stderr[-4000:]
        assert proc.returncode != 0 and "step 3: 3/3, step 4: 3/3" in proc.stderr
        assert _checkpoint_step(tmp_path, 4)["step"] == 4
    finally:
        server.close()


@pytest.mark.slow
def test_flaky_retriever_run_completes_with_failures_masked_skipped_and_counted(tmp_path):
    """Every third request fails (30% of them, the probe included). Step 1's expansion
    search fails: 1 of 3 leaves masked, the step trains. Step 2 is clean. Step 3's chains
    fail: 2 of 3 searches, the step is skipped. Before: no step was ever skipped and the
    failed leaves were trained as −1."""
    server = _SearchR1Server(fail=lambda n, queries: n % 10 in (3, 6, 9))
    try:
        proc = _train(_tiny_at2po(server.url, steps=3, retries=0), tmp_path)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    records = read_jsonl(tmp_path / "metrics.jsonl")
    counts = [
        (r["outage/retriever_requests"], r["outage/retriever_failures"], r["outage/skipped_steps"])
        for r in records
    ]
    assert counts == [(3.0, 1.0, 0.0), (3.0, 0.0, 0.0), (3.0, 2.0, 1.0)]
    assert records[0]["outage/masked_leaves"] == 1.0 and records[0]["train/tokens"] > 0
    assert "train/loss" in records[1] and "train/loss" not in records[2]
    assert server.failed == 2 and "step 3 skipped, not trained on" in proc.stdout
    assert _checkpoint_step(tmp_path, 3)["step"] == 3  # the last step, skipped, still saved
