"""AT²PO: turn-tree rollouts with entropy-guided expansion, turn-wise credit and the ATPO
loss (arXiv 2601.04767), on search-augmented QA.

Run (from the repository root):

    # the paper's setting, Qwen3-4B, e5 + Wikipedia-2018 retriever served over HTTP
    python launch/train.py --config=configs/at2po_qwen.py:qwen3_4b \\
        --config.model.path=/ckpt/Qwen3-4B --config.search.url=http://retriever:8000 \\
        --config.qa.train=/data/hotpotqa/train.jsonl --workdir=runs/at2po_4b
    # baselines on the same data: grpo (16 chains), dapo, gspo, random_tree (Tree-GRPO)
    python launch/train.py --config=configs/at2po_qwen.py:grpo --config.model.path=...
    # the paper's third backbone, Qwen2.5-7B-Instruct
    python launch/train.py --config=configs/at2po_qwen.py:qwen2_5_7b \\
        --config.model.path=/ckpt/Qwen2.5-7B-Instruct ...
    # the embedded default: SmolLM2-135M, BM25 over the Wikipedia intros, embedded QA set
    python launch/train.py --config=configs/at2po_qwen.py:cpu --workdir=runs/at2po_cpu
    # a math agent with the sandboxed Python tool instead of search (needs bubblewrap),
    # on reasoning-gym arithmetic or a jsonl of {"problem", "answer"} lines
    python launch/train.py --config=configs/at2po_qwen.py:math_python \\
        --config.model.path=/ckpt/Qwen3-4B --config.qa.train=/data/math/train.jsonl \\
        --workdir=runs/at2po_math_python

Variants: ``qwen3_4b`` (default), ``qwen3_8b``, ``qwen2_5_7b`` (the paper's 3
backbones), ``grpo``, ``dapo``, ``gspo`` (chain baselines), ``random_tree`` (Tree-GRPO),
``random_tree_atpo``, ``tree_vanilla`` (ablations), ``cpu``, ``cpu_pairs`` (two questions
at once, two searches per answer), ``tiny`` (tests),
``math_python``, ``math_python_tiny`` (math/python, below). The rows of the paper's
ablation (Table 2, Qwen3-4B multi-hop): random tree + GRPO loss = ``random_tree``; +
ATPO loss = ``random_tree_atpo``; + entropy-guided expansion = ``tree_vanilla``; +
turn-wise credit assignment = ``qwen3_4b``. Where the paper and its reference code
differ, the paper is the default and the code's choice is an option:
``credit.weighting`` (``linear`` paper / ``softmax`` code), ``tree.alpha`` (none in the
paper, 0.05 in code).
Where the paper is silent the reference code decides: ``env.require_think`` and
``env.over_limit_invalid`` (format incentives, both on), ``env.stop_at_answer`` (off: the
EOS after ``</answer>`` is trained). The paper variants prompt with Fig. 6's layout
(``PAPER_PROMPT``); ``cpu``/``tiny`` keep the compact prompt their cold start teaches.

The math agent (``math_python``; every choice [ours], the paper has only search): the same
trees, credit and loss, with ``env.tools=("python",)`` (code in ``<python>``, run by the
bubblewrap sandbox of ``rlpt_jax/envs/python_tool.py``, output in ``<result>``; search
off), problems from RLVR's loader (``qa.train``: a reasoning-gym generator or a jsonl of
``problem``/``answer`` lines) and the boxed answer checked by the math verifier
(``qa.reward="math"``). ``math_python_tiny`` is its wiring test on the embedded model
(no cold start: the search demonstrations do not apply, and the 135M model does not
follow the protocol, so its leaves score the format penalty).

Sources in the comments: "AT²PO" is arXiv 2601.04767, cited by figure, table or the part
of the paper named in spec/at2po.md (the spec gives no section numbers); "ref code" is the
authors' public verl fork, cited by its file paths; "[ours]" marks a choice neither
makes. Mesh, dtypes, memory, checkpoint and outage fields are engineering settings, all
[ours].
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import common

# The prompt of the paper's Fig. 6 (structure, our wording), laid out as the reference
# code's data preparation does (data_process/hotpotqa_multihop_train.py): one system
# message with the question in its {question} field, stripped and ending in "?"
# (rlpt_jax.rollout.at2po.prompt_ids).
PAPER_PROMPT = (
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
    "Question: {question}"
)

# The compact prompt of the CPU variants (system message; the question follows as a user
# message): their cold start's demonstrations are written in this format.
SYSTEM_PROMPT = (
    "Answer the question. Think inside <think> and </think>. To look something up, write "
    "<search> query </search>; results come back between <result> and </result>. Search "
    "as often as you need. When you know the answer, write it inside <answer> and "
    "</answer>, with the final short answer in \\boxed{}, e.g. <answer> \\boxed{Paris} "
    "</answer>."
)


VARIANTS = (
    "qwen3_4b",
    "qwen3_8b",
    "qwen2_5_7b",
    "grpo",
    "dapo",
    "gspo",
    "random_tree",
    "random_tree_atpo",
    "tree_vanilla",
    "cpu",
    "cpu_pairs",
    "tiny",
    "math_python",
    "math_python_tiny",
)

# [ours] The math agent's instructions (system message; the problem follows unchanged as
# the user message: the paper's layout would append "?" to it).
MATH_PYTHON_PROMPT = (
    "Solve the math problem step by step: think first, then answer. You can run Python "
    "code. Write your reasoning inside <think> </think>. To compute something, write a "
    "complete Python program inside <python> </python>; it runs in a fresh sandbox (no "
    "network, no files from earlier programs; the standard library, numpy and sympy), and "
    "what it prints, or its error, comes back inside <result> </result>. Only printed "
    "values come back, so print what you need to see. Run code as often as you need. For "
    "example: <think> your reasoning </think> <python> print(37 * 43) </python> <result> "
    "1591 </result> <think> more reasoning </think> <answer> The final answer is \\[ "
    "\\boxed{1591} \\] </answer>. Give the exact final answer inside \\boxed{} in the "
    "<answer> block."
)


# The chain baselines' losses, as the paper's experimental setup lists them (AT²PO,
# baselines): GRPO with KL 0.001 and clip 0.2 (ref code: AEPO/scripts/GRPO_qwen3_4B.sh,
# kl_loss_coef=0.001, kl_loss_type low_var_kl = k3; the config it loads,
# AEPO/scripts/config/ppo_trainer_dr.yaml: clip_ratio 0.2, loss_agg_mode token-mean);
# DAPO's clip-higher 0.2/0.28 and token-level loss (DAPO, arXiv 2503.14476, Sec. 3.1 and
# 3.3); GSPO's sequence ratio with clip 3e-4/4e-4 (AT²PO, baselines; GSPO, arXiv
# 2507.18071, its setup), token mean per sequence as the ref code's
# ATPO/verl_atpo/verl/trainer/ppo/core_algos.py compute_policy_loss_gspo aggregates.
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
    c.model = common.model()
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.chat_template = True  # Fig. 6 / ref code: the chat template with the generation prompt
    # AT²PO, training recipe: 64 prompts per step, T=1.0, top-p 1.0, max prompt 2000 /
    # response 6192 tokens (ref code: ATPO/scripts/ATPO_qwen3_4B.sh TRAIN_BATCH_SIZE,
    # MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH; ATPO/scripts/config/ppo_trainer_dr.yaml
    # rollout temperature, top_p, top_k -1 = off). One sample per prompt: the tree (or the
    # chains below) makes the group.
    c.rollout = dict(
        prompts_per_step=64,
        samples_per_prompt=1,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        # (the response budget, 6192, is tree.max_response_tokens: model and tool tokens)
        max_prompt_tokens=2000,
        cache_dtype="bfloat16",
        sampler_rows=176,  # [ours] memory: 8 trees of 22 leaves at once
    )
    # AT²PO, entropy-guided tree expansion: M=10 chains, L=2 rounds, K=6 picks, 22
    # leaves (ref code: ATPO/scripts/ATPO_qwen3_4B.sh INITIAL_ROLLOUTS, EXPANSION_ITERATIONS,
    # BEAM_SIZE, SAMPLES_PER_TREE); the sibling penalty alpha is not in the paper, 0.05 in
    # the ref code (ATPO/verl_atpo/verl/workers/rollout/vllm_rollout/
    # vllm_rollout_with_tools_tree_offline.py: score = H - 0.05 * (|children(parent)| - 1)).
    c.tree = dict(
        num_chains=10,
        rounds=2,
        picks=6,
        alpha=0.05,
        expansion="entropy",
        max_response_tokens=6192,
        # No per-turn cap: the paper caps only the response (6192 tokens), as does the
        # reference (MAX_RESPONSE_LENGTH in ATPO/scripts/ATPO_qwen3_4B.sh).
        max_turn_tokens=placeholder(int),
        # [ours] a safety cap the ref code does not have: 6 searches and the answer fit in 7
        max_turns=8,
        seed=0,
    )
    # AT²PO, turn-wise credit assignment: linear entropy weights w_c = H(c) / sum H
    # (the ref code's ATPO_qwen3_4B.sh uses node_value_mode=child_softmax: weighting
    # "softmax"), A = V (its node_adv_mode=node_value); "vanilla" is the Table 2 ablation
    # without credit assignment (node_adv_mode=vanilla).
    c.credit = dict(weighting="linear", advantage="value")
    # AT²PO, search-QA setting: top-3 passages of at most 1000 characters, at most 6 tool
    # calls (ref code: rag_server/launch.sh --topk 3; ATPO/verl_atpo/verl/workers/rollout/
    # tools/search_tool.py result_length=1000; vllm_rollout_with_tools_tree_offline.py
    # call_limit 6).
    c.env = dict(
        # AT²PO, search-QA setting: search is the only tool. "python" adds the sandboxed
        # Python tool (the math_python variants, [ours]).
        tools=("search",),
        topk=3,
        max_chars=1000,
        max_tool_calls=6,
        # Reference code (ATPO/verl_atpo/verl/utils/reward_score/deep_research_em.py,
        # validate_format): a response without a paired <think> block is invalid (-1).
        require_think=True,
        # Reference code (vllm_rollout_with_tools_tree_offline.py): a search past the limit
        # gets a notice without <result> tags, which validate_format then rejects (-1).
        over_limit_invalid=True,
        # Reference code: generation stops only at </search> (and EOS), so the EOS after
        # </answer> is sampled and trained.
        stop_at_answer=False,
        # [ours] the Python tool's output shown in <result>, and programs run at once
        python_max_chars=2000,
        python_workers=16,
    )
    # [ours] The Python tool's sandbox (read only when env.tools has "python"): per program
    # 10 s wall clock, 1 GiB of memory, 64 KiB of stdout/stderr each, 16 MiB per file, a
    # 64 MiB work dir, 128 processes. Without bubblewrap the tool refuses to start unless
    # allow_unisolated=True (unsafe: only where a container already isolates the run).
    c.python_tool = dict(
        timeout_s=10.0,
        memory_bytes=1 << 30,
        max_output_bytes=64 * 1024,
        max_file_bytes=16 << 20,
        max_disk_bytes=64 << 20,
        max_processes=128,
        allow_unisolated=False,
        url=placeholder(str),  # a SandboxFusion-compatible service instead of bubblewrap
    )
    # AT²PO, search-QA setting: e5-base-v2 over Wikipedia 2018, served over HTTP (ref code:
    # rag_server/). [ours]: timeout and retries.
    c.search = dict(
        backend="http",
        url="http://127.0.0.1:8000",
        timeout_s=30.0,
        retries=3,
        index_dir=placeholder(str),
    )
    # format_penalty: AT²PO, training recipe: -1 for an invalid format (ref code:
    # deep_research_em.py); system_prompt: AT²PO Fig. 6. train/eval: [ours] the embedded
    # set; the paper trains on HotpotQA (multi-hop) or NQ (single-hop), FlashRAG jsonl.
    # reward: AT²PO, training recipe: EM of the boxed answer; "math" (the math_python
    # variants, [ours]) checks it with the math verifier on RLVR's problems, sized by
    # qa.math as rlvr_qwen.py sizes them.
    c.qa = dict(
        train="embedded",
        eval=("embedded",),
        format_penalty=-1.0,
        system_prompt=PAPER_PROMPT,
        reward="em",
        math=common.math_problems(),
    )
    # The leaves' group advantage of credit.advantage="vanilla" (the chain baselines and
    # the Tree-GRPO / ablation variants; ATPO's "value" credit does not read it): verl's
    # GRPO as the ref code runs it (algorithm.adv_estimator=grpo,
    # norm_adv_by_std_in_grpo=True; ATPO/verl_atpo/verl/trainer/ppo/core_algos.py
    # compute_grpo_outcome_advantage divides by torch.std, the sample std, + 1e-6).
    c.advantage = dict(kind="grpo", scale_by_std=True, std_ddof=1)
    c.dapo = common.dapo_off()  # on in the dapo variant
    # AT²PO, ATPO objective: per-turn ratio, eps 3e-3 / 4e-3, log-ratio clamp 10, token
    # mean per sequence then mean over sequences, no KL, no entropy bonus (ref code:
    # ATPO_qwen3_4B.sh policy_loss=gspo_turn, clip_ratio_low/high, kl_loss_coef=0.0;
    # core_algos.py compute_policy_loss_gspo_turn: clamp 10, seq-mean-token-mean).
    c.loss = dict(
        kind="atpo",
        clip_low=3e-3,
        clip_high=4e-3,
        agg="seq_mean_token_mean",
        kl_coef=0.0,
        kl_kind="k3",
        entropy_coef=0.0,
        log_ratio_clamp=10.0,
        # pi_old from the training forward, as the reference code's verl actor does
        # (compute_log_prob before the update); the sampler's differ by their numerics.
        old_logprobs="recompute",
    )
    # AT²PO, training recipe: AdamW lr 1e-6 constant, wd 0.01, grad clip 1.0; 240 steps;
    # mini-batch 8 prompts (8 updates a step, 1 epoch) (ref code: ATPO_qwen3_4B.sh optim.lr,
    # PPO_MINI_BATCH_SIZE=8; ppo_trainer_dr.yaml weight_decay, grad_clip, warmup_style).
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
        # pack each tree's unique tokens for the update (None: on unless attention is xla)
        tree_packing=placeholder(bool),
    )
    # num_prompts None: the full test sets (AT²PO Table 1 and its test-set sizes; the
    # averages weight each dataset by its questions, as eval/em_avg does). every=20: the ref
    # code's TEST_FREQ=20 (ATPO_qwen3_4B.sh). Validation is greedy, one chain, no tree
    # (AT²PO, training recipe).
    c.eval = dict(
        every=20, num_prompts=placeholder(int), ntp_docs=0, ntp_max_tokens=256, max_new_tokens=6192
    )
    # [ours] save with each evaluation (the ref code's SAVE_FREQ is 50)
    c.checkpoint = dict(
        save_every=20, max_to_keep=3, best_metric="eval/em_avg", best_mode="max", async_save=True
    )
    c.outage = common.outage()
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
    if variant in ("qwen3_4b", "qwen3_8b"):  # AT²PO Table 1 backbones (main: Qwen3-4B)
        c.model.arch = variant.replace("_", "-")
    elif variant == "qwen2_5_7b":  # Qwen2.5-7B-Instruct (paper Table 1, third backbone)
        c.model.arch = "qwen2.5-7b"
    elif variant in CHAIN_BASELINES:
        # 16 independent chains (AT²PO, baselines: GRPO with 16 rollouts; ref code:
        # GRPO_qwen3_4B.sh ROLLOUT_N=16), each leaf's GRPO advantage
        c.tree.expansion = "chains"
        c.tree.num_chains, c.tree.rounds, c.tree.picks = 16, 0, 0
        c.credit.advantage = "vanilla"
        c.loss.update(CHAIN_BASELINES[variant])
    elif variant in ("random_tree", "random_tree_atpo", "tree_vanilla"):
        # Tree-GRPO (arXiv 2509.21240) and the paper's Table 2 ablations: the same tree
        # budget, each leaf's group advantage on its whole path (the reference code's
        # node_adv_mode=vanilla); random_tree also has GRPO's loss.
        c.tree.expansion = "entropy" if variant == "tree_vanilla" else "random"
        c.credit.advantage = "vanilla"
        if variant == "random_tree":
            c.loss.update(CHAIN_BASELINES["grpo"])
    if variant == "dapo":
        # DAPO as published: dynamic sampling and overlong shaping besides its loss (Sec.
        # 3.2, 3.4). Buffer 2000 of the 6192-token response: the reference's baseline
        # script (AEPO/scripts/GRPO_qwen3_4B.sh, OVERLONG_BUFFER_LEN=2000, factor 1.0);
        # at most 10 sampling rounds: AEPO/scripts/config/ppo_trainer_dr.yaml
        # algorithm.filter_groups.max_num_gen_batches (the GRPO script itself sets 2, with
        # filtering off).
        c.dapo.update(dynamic_sampling=True, max_rounds=10, overlong_buffer=2000)
    if variant in (
        "grpo", "dapo", "gspo", "random_tree", "random_tree_atpo", "tree_vanilla", "math_python"
    ):  # fmt: skip
        c.model.arch = "qwen3-4b"
    if variant in ("cpu", "cpu_pairs", "tiny", "math_python_tiny"):
        cpu = variant in ("cpu", "cpu_pairs")
        common.embedded_cpu(c)
        c.search.backend = "bm25"
        c.search.url = placeholder(str)  # a URL is an error with bm25: set backend=http too
        c.rollout.prompts_per_step = 2 if cpu else 1
        c.rollout.max_prompt_tokens = 512
        # 32 rows at once: the evaluation of 194 + 310 questions in waves (1.5 GB of cache
        # each) instead of 176 (the paper config's 8 trees of 22 leaves; 12 GB here)
        c.rollout.sampler_rows = 32
        c.tree.update(
            num_chains=3 if cpu else 2,
            rounds=1,
            picks=2 if cpu else 1,
            alpha=0.05,
            expansion="entropy",
            # a search turn quotes a sentence (~50 tokens), a result is ~150 tokens
            max_response_tokens=384 if cpu else 48,
            # A per-turn cap (the paper has none) ends a rambling turn of the 135M model
            # early instead of letting it spend the whole budget on CPU time.
            max_turn_tokens=96 if cpu else 16,
            max_turns=4,
            seed=0,
        )
        c.env.max_chars = 300
        c.env.topk = 2
        # The cold start teaches the compact prompt's format; its 135M model also stops at
        # </answer>, so no CPU time goes to text after the answer (EOS is not trained).
        c.qa.system_prompt = SYSTEM_PROMPT
        c.env.stop_at_answer = True
        c.optim.learning_rate = 2e-6
        c.train.update(
            steps=6 if cpu else 2,
            mini_batches=1,
            micro_batch_size=4,
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
        c.eval.at_start = cpu  # the summary shows before and after RL
    if variant in ("cpu", "cpu_pairs", "tiny"):
        cpu = variant in ("cpu", "cpu_pairs")
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
    if variant == "cpu_pairs":
        # [ours] Two embedded questions asked at once (name both articles): a trajectory
        # searches twice, so the trees branch mid-trajectory (at the second search), where
        # the single questions' trajectories (search, answer) make every expansion a new
        # chain. Sized by the cold-start demonstrations: 430 response tokens at the median,
        # 630 at most (prompt ~190).
        c.qa.train = "embedded_pairs"
        c.qa.eval = ("embedded_pairs",)
        c.tree.max_response_tokens = 640
        c.eval.max_new_tokens = 640
    if variant.startswith("math_python"):
        tiny = variant == "math_python_tiny"
        # [ours] The math agent: Python instead of search, verifiable math problems.
        c.env.tools = ("python",)
        c.qa.reward = "math"
        c.qa.system_prompt = MATH_PYTHON_PROMPT
        # Arithmetic with several multi-digit terms (reasoning-gym), where running code pays;
        # the tiny test: two one-digit terms, as rlvr_qwen.py:tiny.
        c.qa.train = (
            "rg:chain_sum:min_terms=2,max_terms=2,max_digits=1"
            if tiny
            else "rg:basic_arithmetic:min_terms=4,max_terms=8,min_digits=3,max_digits=6"
        )
        c.qa.eval = ()  # held out: qa.math.heldout problems of the train source
        c.qa.math.update(train_size=50 if tiny else 10_000, heldout=2 if tiny else 64)
        if tiny:
            c.python_tool.timeout_s = 5.0
            c.env.python_workers = 2
    c.lock()
    return c
