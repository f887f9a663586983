"""AT²PO: turn-tree rollouts with entropy-guided expansion, turn-wise credit and the ATPO
loss (arXiv 2601.04767), on search-augmented QA.

Run (from the repository root):

    # the paper's setting, Qwen3-4B, e5 + Wikipedia-2018 retriever served over HTTP
    python launch/train.py --config=configs/at2po_qwen.py:qwen3_4b \\
        --config.model.path=/ckpt/Qwen3-4B --config.search.url=http://retriever:8000 \\
        --config.qa.train=/data/hotpotqa/train.jsonl --workdir=runs/at2po_4b
    # baselines on the same data: grpo (16 chains), dapo, gspo, random_tree
    python launch/train.py --config=configs/at2po_qwen.py:grpo --config.model.path=...
    # the embedded default: SmolLM2-135M, BM25 over the Wikipedia intros, embedded QA set
    python launch/train.py --config=configs/at2po_qwen.py:cpu --workdir=runs/at2po_cpu

Variants: ``qwen3_4b`` (default), ``qwen3_8b``, ``grpo``, ``dapo``, ``gspo``,
``random_tree``, ``cpu``, ``tiny`` (tests). Where the paper and its reference code differ,
the paper is the default and the code's choice is an option: ``credit.weighting``
(``linear`` paper / ``softmax`` code), ``tree.alpha`` (none in the paper, 0.05 in code).
"""

import ml_collections
from ml_collections.config_dict import placeholder

SYSTEM_PROMPT = (
    "Answer the question. Think inside <think> and </think>. To look something up, write "
    "<search> query </search>; results come back between <result> and </result>. Search "
    "as often as you need. When you know the answer, write it inside <answer> and "
    "</answer>, with the final short answer in \\boxed{}, e.g. <answer> \\boxed{Paris} "
    "</answer>."
)


VARIANTS = ("qwen3_4b", "qwen3_8b", "grpo", "dapo", "gspo", "random_tree", "cpu", "tiny")


# The chain baselines differ from ATPO in their loss only (settings as published).
CHAIN_BASELINES = {
    "grpo": dict(kind="ppo", clip_low=0.2, clip_high=0.2, agg="token_mean", kl_coef=0.001),
    "dapo": dict(kind="ppo", clip_low=0.2, clip_high=0.28, agg="token_mean", kl_coef=0.0),
    "gspo": dict(
        kind="gspo", clip_low=3e-4, clip_high=4e-4, agg="seq_mean_token_mean", kl_coef=0.0
    ),
}


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "at2po"
    c.seed = 0
    c.model = dict(
        path=placeholder(str),
        arch=placeholder(str),
        tokenizer_path=placeholder(str),
        param_dtype="float32",
        dtype="bfloat16",
        remat=True,
        batch_invariant=False,  # True: sampler log-probs == update step's, bit for bit
    )
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.chat_template = True
    # Paper: 64 prompts per step, T=1.0, top-p 1.0, max prompt 2000 / response 6192.
    c.rollout = dict(
        prompts_per_step=64,
        samples_per_prompt=1,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=6192,
        max_prompt_tokens=2000,
        cache_dtype="bfloat16",
        sampler_rows=176,
    )
    c.tree = dict(
        num_chains=10,
        rounds=2,
        picks=6,
        alpha=0.05,
        expansion="entropy",
        max_response_tokens=6192,
        max_turn_tokens=1024,
        max_turns=8,
        seed=0,
    )
    c.credit = dict(weighting="linear", advantage="value")
    c.env = dict(topk=3, max_chars=1000, max_tool_calls=6)
    c.search = dict(
        backend="http",
        url="http://127.0.0.1:8000",
        timeout_s=30.0,
        retries=3,
        index_dir=placeholder(str),
    )
    c.qa = dict(
        train="embedded", eval=("embedded",), format_penalty=-1.0, system_prompt=SYSTEM_PROMPT
    )
    c.advantage = dict(kind="grpo", scale_by_std=True)  # used by the chain baselines
    # ATPO: per-turn ratio, eps 3e-3 / 4e-3, log-ratio clamp 10, no KL, no entropy bonus.
    c.loss = dict(
        kind="atpo",
        clip_low=3e-3,
        clip_high=4e-3,
        agg="seq_mean_token_mean",
        kl_coef=0.0,
        kl_kind="k3",
        entropy_coef=0.0,
        log_ratio_clamp=10.0,
    )
    # AdamW lr 1e-6 constant, wd 0.01, clip 1.0; 240 steps; mini-batch 8 prompts (8 updates).
    c.optim = dict(
        learning_rate=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.01, grad_clip=1.0
    )
    c.train = dict(
        steps=240,
        mini_batches=8,
        micro_batch_size=8,
        logprob_chunk=1024,
        ntp_seq_len=4096,
        ntp_batch_size=64,
        kl_to_init=True,  # log KL(policy || initial policy); one extra forward a step
        peak_tflops=placeholder(float),  # summed device peak, for the MFU metric
    )
    c.eval = dict(every=20, num_prompts=512, ntp_docs=0, ntp_max_tokens=256, max_new_tokens=6192)
    c.checkpoint = dict(
        save_every=20, max_to_keep=3, best_metric="eval/em_avg", best_mode="max", async_save=True
    )
    c.export_hf = True
    # The paper starts RL from an instruct model that follows the protocol; None here.
    c.cold_start = None
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "qwen3_4b"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} of at2po_qwen.py; valid: {', '.join(VARIANTS)}"
        )
    c = base()
    if variant in ("qwen3_4b", "qwen3_8b"):
        c.model.arch = variant.replace("_", "-")
    elif variant in CHAIN_BASELINES:  # 16 independent chains with the baseline's loss
        c.tree.expansion = "chains"
        c.tree.num_chains, c.tree.rounds, c.tree.picks = 16, 0, 0
        c.loss.update(CHAIN_BASELINES[variant])
    elif variant == "random_tree":  # Tree-GRPO-style random expansion, same tree budget
        c.tree.expansion = "random"
    if variant in ("grpo", "dapo", "gspo", "random_tree"):
        c.model.arch = "qwen3-4b"
    if variant in ("cpu", "tiny"):
        cpu = variant == "cpu"
        c.model.path = "embedded"
        c.model.dtype = "float32"
        c.model.remat = True  # a 16x256 float32 step peaks at ~14 GB without remat
        # Fields are set one by one, never by replacing a dict, so that every field of
        # the base stays overridable from the command line.
        c.mesh.update(data=-1, fsdp=1, tensor=1)
        c.search.backend = "bm25"
        c.search.url = placeholder(str)  # a URL is an error with bm25: set backend=http too
        c.rollout.prompts_per_step = 2 if cpu else 1
        c.rollout.max_prompt_tokens = 512
        c.rollout.cache_dtype = "float32"
        c.tree.update(
            num_chains=3 if cpu else 2,
            rounds=1,
            picks=2 if cpu else 1,
            alpha=0.05,
            expansion="entropy",
            # a search turn quotes a sentence (~50 tokens), a result is ~150 tokens
            max_response_tokens=384 if cpu else 48,
            max_turn_tokens=96 if cpu else 16,
            max_turns=4,
            seed=0,
        )
        c.env.max_chars = 300
        c.env.topk = 2
        c.optim.learning_rate = 2e-6
        c.train.update(
            steps=6 if cpu else 2,
            mini_batches=1,
            micro_batch_size=4,
            logprob_chunk=256,
            ntp_seq_len=256,
            ntp_batch_size=2,
        )
        c.eval.update(
            every=3 if cpu else 2,
            num_prompts=32 if cpu else 1,
            ntp_docs=0,
            ntp_max_tokens=128,
            max_new_tokens=384 if cpu else 48,
        )
        c.checkpoint.save_every = 3 if cpu else 1
        # One checkpoint on disk: 135M float32 weights plus both Adam moments are 1.6 GB.
        c.checkpoint.max_to_keep = 1
        c.eval.at_start = cpu  # the summary shows before and after RL
        # Cold start: SFT on protocol trajectories of the train questions (think, search,
        # the real BM25 results, answer), so that a 135M model follows the protocol.
        c.cold_start = dict(
            seed=0,
            # tiny: 64 demonstrations (each is a real BM25 search or two)
            sft=dict(
                data="at2po",
                seq_len=1024,
                batch_rows=1,
                heldout=16 if cpu else 2,
                max_examples=0 if cpu else 64,
            ),
            optim=dict(learning_rate=5e-5, schedule="constant", grad_clip=1.0),
            train=dict(
                steps=16 if cpu else 1, micro_batch_size=1, logprob_chunk=256, kl_to_init=False
            ),
            eval=dict(every=0, num_prompts=0),
        )
    c.lock()
    return c
