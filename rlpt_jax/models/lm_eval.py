"""Next-token loss / perplexity of a model on text, with a readable report.

Used by ``launch/perplexity.py`` and by training to watch for forgetting on held-out text.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from rlpt_jax import assets
from rlpt_jax.models.decoder import Decoder


@nnx.jit
def _token_logprobs(model: Decoder, tokens: jax.Array, mask: jax.Array):
    """log π(tokens[:, t+1] | tokens[:, ≤t]) [B, T-1] and the argmax prediction."""
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, _ = model(tokens, positions, attention_mask=mask)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = tokens[:, 1:]
    picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits[:, :-1], axis=-1)


def nll_per_token(model: Decoder, token_lists: list[list[int]], pad_id: int, bucket: int = 64):
    """Per-document arrays of next-token negative log-likelihoods (nats)."""
    out = []
    for ids in token_lists:
        if len(ids) < 2:
            raise ValueError("each document needs at least 2 tokens to score")
        t = int(math.ceil(len(ids) / bucket) * bucket)  # bucketed length bounds recompiles
        tokens = np.full((1, t), pad_id, np.int32)
        mask = np.zeros((1, t), np.int32)
        tokens[0, : len(ids)] = ids
        mask[0, : len(ids)] = 1
        logp, _ = _token_logprobs(model, jnp.asarray(tokens), jnp.asarray(mask))
        out.append(-np.asarray(logp)[0, : len(ids) - 1])
    return out


def heldout_wiki_paragraphs(num_docs: int, seed: int = 1234) -> list[dict[str, str]]:
    """A fixed, seeded selection of embedded Wikipedia intros."""
    docs = assets.load_wiki_intros()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(docs), size=min(num_docs, len(docs)), replace=False)
    return [docs[i] for i in sorted(idx)]


def report(model_dir: str | Path | None, num_docs: int, max_tokens: int, show: int) -> dict:
    from rlpt_jax.models import embedded
    from rlpt_jax.models.hf_io import load_hf
    from rlpt_jax.models.tokenizer import Tokenizer

    model_dir = Path(model_dir) if model_dir else embedded.smollm2_dir()
    t0 = time.time()
    model = load_hf(model_dir)
    tok = Tokenizer(model_dir)
    print(
        f"loaded {model.cfg.model_type} from {model_dir} "
        f"({sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) / 1e6:.1f}M "
        f"params) in {time.time() - t0:.1f}s"
    )
    docs = heldout_wiki_paragraphs(num_docs)
    ids = [tok.encode(d["text"])[:max_tokens] for d in docs]
    nll = []
    for doc_ids in tqdm(ids, desc="scoring", unit="doc"):
        nll.extend(nll_per_token(model, [doc_ids], tok.pad_id))
    total = float(np.concatenate(nll).mean())
    print(f"\n{'document':40s} {'tokens':>6s} {'nll':>7s} {'ppl':>8s}")
    for d, n in zip(docs, nll):
        print(f"{d['title'][:40]:40s} {len(n) + 1:6d} {n.mean():7.3f} {math.exp(n.mean()):8.2f}")
    print(f"{'ALL':40s} {sum(len(n) + 1 for n in nll):6d} {total:7.3f} {math.exp(total):8.2f}")

    first = ids[0]
    tokens = jnp.asarray(np.asarray(first, np.int32)[None])
    logp, pred = _token_logprobs(model, tokens, jnp.ones_like(tokens))
    pred = np.asarray(pred)[0]
    print(f"\nnext-token predictions on '{docs[0]['title']}':")
    print(f"{'context (last 40 chars)':42s} {'true':>14s} {'predicted':>14s}")
    for t in range(min(show, len(first) - 1)):
        ctx = tok.decode(first[: t + 1]).replace("\n", " ")[-40:]
        mark = "✓" if pred[t] == first[t + 1] else " "
        print(
            f"{ctx!r:42s} {tok.decode([first[t + 1]])!r:>14s} "
            f"{tok.decode([int(pred[t])])!r:>14s} {mark}"
        )
    acc = float(
        np.mean(
            [
                np.mean(
                    np.asarray(
                        _token_logprobs(
                            model,
                            jnp.asarray(np.asarray(i, np.int32)[None]),
                            jnp.ones((1, len(i)), jnp.int32),
                        )[1]
                    )[0]
                    == np.asarray(i[1:])
                )
                for i in ids
            ]
        )
    )
    print(f"\nmean next-token accuracy {acc:.3f}, perplexity {math.exp(total):.2f}")
    return {"nll": total, "ppl": math.exp(total), "accuracy": acc}
