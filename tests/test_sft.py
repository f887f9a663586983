"""SFT (the cold start): assistant-only loss masks, packing, and that SFT lowers the loss."""

import json

import jax
import numpy as np
import optax
import pytest

from hf_fixtures import tiny_llama_config
from rlpt_jax.batch import make_batch
from rlpt_jax.data import sft
from rlpt_jax.data.jsonl import SkippedDataWarning
from rlpt_jax.models.decoder import init_model
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.train.state import create_train_state
from rlpt_jax.train.steps import StepConfig, make_update_step, nll_objective

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def test_mask_covers_exactly_the_assistant_turns(embedded_model_dir):
    tok = Tokenizer(embedded_model_dir)
    eos = tok.eos_ids[0]
    ex = sft.encode_conversation(CONVERSATION, tok.render_chat, tok.encode, eos)
    # Built by hand: the template up to each assistant turn (mask 0), then the answer's
    # own tokens and <|im_end|> (mask 1); the newline after <|im_end|> opens the next
    # turn's context.
    first = tok.encode(tok.render_chat(CONVERSATION[:2]))
    a1 = tok.encode("Paris.") + [eos]
    done = tok.render_chat(CONVERSATION[:3], add_generation_prompt=False).rstrip()
    between = tok.encode(tok.render_chat(CONVERSATION[:4])[len(done) :])
    a2 = tok.encode("Rome.") + [eos]
    assert list(ex.tokens) == first + a1 + between + a2
    assert list(ex.mask) == [0] * len(first) + [1] * len(a1) + [0] * len(between) + [1] * len(a2)
    trained = [t for t, m in zip(ex.tokens, ex.mask) if m]
    assert tok.decode(trained) == "Paris.<|im_end|>Rome.<|im_end|>"
    # The first assistant turn's ids are what a rollout would see: the prompt encoded
    # whole (with the generation prompt), then the sampled text and the end token.
    assert list(ex.tokens[: len(first) + len(a1)]) == first + a1


def test_template_that_rewrites_history_is_an_error():
    def render(messages, add_generation_prompt=True):
        # Empties an assistant turn once a later message exists (as a template that
        # strips earlier reasoning does): not prefix-stable.
        parts = []
        for i, m in enumerate(messages):
            hidden = m["role"] == "assistant" and i < len(messages) - 1
            parts.append(f"[{m['role']}]" + ("" if hidden else m["content"]))
        return "".join(parts) + ("[assistant]" if add_generation_prompt else "")

    with pytest.raises(sft.ChatFormatError, match="prefix-stable"):
        sft.encode_conversation(CONVERSATION, render, lambda s: [ord(c) for c in s], 0)


def test_rlpt_demonstration_answers_the_target_sentence():
    from rlpt_jax.data.segments import Sample
    from rlpt_jax.data.tasks import TaskConfig, make_task

    sample = Sample("d", 2, "First one.", "Second one.", ("Third one.", "Fourth one."))
    for kind in ("asr", "msr"):
        task = make_task(sample, TaskConfig(), kind=kind)
        (conv,) = sft.rlpt_demonstrations([task])
        assert conv[-1] == {
            "role": "assistant",
            "content": "<|startofprediction|>Second one.<|endofprediction|>",
        }
        assert conv[:-1] == list(task.messages)


def test_pack_examples_never_splits_and_masks_segment_starts():
    a = sft.Example((5, 6, 7), (1, 1, 1))  # a first token in the mask is still not trained
    b = sft.Example((8, 9, 10, 11), (0, 0, 1, 1))
    c = sft.Example((12, 13), (0, 1))
    tokens, seg, mask = sft.pack_examples([a, b, c], seq_len=6, pad_id=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 12, 13]])
    np.testing.assert_array_equal(seg, [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 2, 2]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 1]])
    kept, dropped = sft.fits([a, sft.Example(tuple(range(9)), (1,) * 9)], 6)
    assert kept == [a] and dropped == 1
    with pytest.raises(ValueError, match="does not fit"):
        sft.pack_examples([sft.Example(tuple(range(9)), (1,) * 9)], 6, 0)


def test_chat_jsonl_counts_bad_lines(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": CONVERSATION[1:3]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
        "",
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    with pytest.warns(SkippedDataWarning, match=r"skipped 4 \(bad_conversation: 2"):
        convs, report = sft.load_chat_jsonl(path)
    assert convs == [CONVERSATION[1:3]]
    assert report.read == 5 and report.skipped == 4
    assert any("no assistant" in e for e in report.examples)


def test_sft_lowers_assistant_loss_on_its_training_set():
    vocab = 32
    model = init_model(tiny_llama_config(vocab), seed=0)
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(8):
        prompt = rng.integers(3, vocab, size=6).tolist()
        answer = [7, 8, 9, 2]  # the same answer to every prompt: learnable in a few steps
        examples.append(sft.Example(tuple(prompt + answer), (0,) * 6 + (1,) * 4))
    tokens, seg, mask = sft.pack_examples(examples, seq_len=20, pad_id=0)
    zeros = np.zeros(tokens.shape, np.float32)
    batch = make_batch(tokens, mask, zeros, zeros, segment_ids=seg)
    tx = optax.adam(1e-2)
    state = create_train_state(model, tx)
    update = make_update_step(tx, nll_objective(), StepConfig())
    losses = []
    for _ in range(12):
        state, m = update(state, batch)
        losses.append(float(jax.device_get(m["loss"])))
    assert losses[-1] < 0.5 * losses[0], losses


def test_at2po_demonstrations_follow_the_protocol(embedded_model_dir):
    """Real BM25 results, masked out; model turns trained; every trajectory format-valid."""
    from rlpt_jax.data import qa
    from rlpt_jax.envs.search import BM25Search
    from rlpt_jax.envs.search_env import SearchEnv, SearchEnvConfig
    from rlpt_jax.envs.tags import check_format
    from rlpt_jax.rollout.at2po import demonstration, prompt_ids

    tok = Tokenizer(embedded_model_dir)
    env = SearchEnv(BM25Search(), SearchEnvConfig(topk=2, max_chars=300))
    questions = qa.embedded_qa("train")[:24]
    searches = []
    for i, q in enumerate(questions):
        demo = demonstration(tok, True, env, q, "Answer.", weak_first=i % 2 == 0)
        if demo is None:
            continue
        ids, mask = demo
        prompt = prompt_ids(tok, True, q.question, "Answer.")
        assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)])
        response = tok.decode(ids[len(prompt) :])
        assert check_format(response) == (True, "ok"), response
        trained = tok.decode([t for t, m in zip(ids, mask) if m])
        untrained = tok.decode(
            [t for t, m in zip(ids[len(prompt) :], mask[len(prompt) :]) if not m]
        )
        assert "<result>" not in trained and untrained.count("<result>") >= 1
        # the answer turn ends with EOS, trained (the reference samples it after </answer>)
        eos = tok.decode([tok.eos_ids[0]])
        assert trained.endswith(f"\\boxed{{{q.golden_answers[0]}}} </answer>{eos}")
        assert ids[-1] == tok.eos_ids[0] and mask[-1] == 1
        searches.append(untrained.count("<result>"))
    assert len(searches) >= 20
    assert 1 in searches and 2 in searches  # some first searches miss


def test_pair_demonstrations_search_each_sentence_then_name_both(embedded_model_dir):
    """An embedded pair's trajectory: a search per sentence (a weak first query may add
    one), the real results masked, then both titles joined as the golden answer is."""
    from rlpt_jax.data import qa
    from rlpt_jax.envs.search import BM25Search
    from rlpt_jax.envs.search_env import SearchEnv, SearchEnvConfig
    from rlpt_jax.envs.tags import check_format
    from rlpt_jax.rewards.qa import exact_match
    from rlpt_jax.rollout.at2po import demonstration, prompt_ids

    tok = Tokenizer(embedded_model_dir)
    env = SearchEnv(BM25Search(), SearchEnvConfig(topk=2, max_chars=300))
    searches = []
    for i, pair in enumerate(qa.embedded_pairs("train")[:12]):
        demo = demonstration(tok, True, env, pair, "Answer.", weak_first=i % 2 == 0)
        if demo is None:
            continue
        ids, mask = demo
        prompt = prompt_ids(tok, True, pair.question, "Answer.")
        response = tok.decode(ids[len(prompt) :])
        assert check_format(response) == (True, "ok"), response
        trained = tok.decode([t for t, m in zip(ids, mask) if m])
        queries = [q.split("</search>")[0] for q in trained.split("<search>")[1:]]
        queries = [" ".join(q.split()) for q in queries]
        first, second = (qa.masked_sentence(part) for part in pair.parts)
        # the first sentence, or its last three words (a weak query that can hit), then
        # the whole second sentence (the mask left out)
        assert queries[0] in (first, " ".join(first.split()[-3:])) and queries[-1] == second
        boxed = trained.rsplit("\\boxed{", 1)[1].split("}")[0]
        assert boxed == pair.golden_answers[0] and exact_match(boxed, pair.golden_answers)
        searches.append(len(queries))
    assert len(searches) >= 10
    assert 2 in searches and 3 in searches  # a weak first query that missed adds a search
