"""Experiment configuration: an ``ml_collections.ConfigDict`` in, frozen dataclasses out.

Config files (``configs/*.py``) build a ``ConfigDict`` so that users can override any field
from the command line (``--config.rollout.temperature=0.7``). At the library boundary,
:func:`from_config_dict` converts it into :class:`ExperimentConfig`: frozen, validated
dataclasses, many of them owned by the module that uses them (``CorpusConfig``,
``SegmentConfig``, ``JudgeConfig``, ``LossConfig``, ``OptimConfig``, ``TreeConfig``, …). An
unknown or misspelt key is an error that names it and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from rlpt_jax.algos.advantages import AdvantageConfig
from rlpt_jax.algos.dapo import DAPOConfig
from rlpt_jax.algos.losses import LossConfig
from rlpt_jax.algos.tree_credit import CreditConfig
from rlpt_jax.checkpoint import CheckpointConfig
from rlpt_jax.data.clean import CleanConfig
from rlpt_jax.data.corpus import CorpusConfig
from rlpt_jax.data.segments import SegmentConfig
from rlpt_jax.data.sft import SFTConfig
from rlpt_jax.data.tasks import TaskConfig
from rlpt_jax.envs.python_tool import PythonToolConfig
from rlpt_jax.envs.search_env import SearchEnvConfig
from rlpt_jax.parallel import MeshConfig
from rlpt_jax.rewards.judges import JudgeConfig
from rlpt_jax.rewards.math_verifier import VerifierConfig
from rlpt_jax.rollout.policy import RolloutConfig
from rlpt_jax.rollout.tree import TreeConfig
from rlpt_jax.train.state import OptimConfig

METHODS = ("rlpt", "ntp", "at2po", "sft", "rlvr")
EMBEDDED = "embedded"


class ExperimentConfigError(ValueError):
    """A config that cannot run; the message says which field and what to do."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which checkpoint to start from and how to hold it.

    ``path``: a Hugging Face folder, or ``"embedded"`` for the packaged SmolLM2-135M.
    ``arch``: an architecture preset (``rlpt_jax.models.presets``) used by ``--dry_run``
    to plan a run before the checkpoint is at hand.
    ``tokenizer_path``: defaults to ``path``. ``remat``: per-layer rematerialisation in
    the update step (less memory, ≈ one more forward of compute); without it the run trains
    the layers as a list (``state.with_layers``) and still saves them stacked. ``batch_invariant``:
    numerics under which the sampler's log-probs equal the update step's bit for bit
    (``ModelConfig.batch_invariant``; float32 on CPU), at ~30% slower sampling.
    ``attention``: ``"auto" | "xla" | "blockwise" | "cudnn" | "splash"``
    (``rlpt_jax.models.attention``; auto: xla on CPU, blockwise on GPU, splash on TPU),
    ``attention_block`` its block size.
    """

    path: str | None = EMBEDDED
    arch: str | None = None
    tokenizer_path: str | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    batch_invariant: bool = False
    attention: str = "auto"
    attention_block: int = 512

    def __post_init__(self):
        from rlpt_jax.models import attention

        try:
            attention.resolve(self.attention, self.dtype, self.batch_invariant, platform="cpu")
        except ValueError as e:
            raise ExperimentConfigError(f"model.attention: {e}") from e
        if self.attention_block < 1:
            raise ExperimentConfigError(
                f"model.attention_block must be >= 1; got {self.attention_block}"
            )

    def model_config_fields(self) -> dict:
        """The ``ModelConfig`` fields this spec sets (``load_hf`` keyword arguments)."""
        return dict(
            param_dtype=self.param_dtype,
            dtype=self.dtype,
            batch_invariant=self.batch_invariant,
            attention=self.attention,
            attention_block=self.attention_block,
        )

    def resolve(self) -> Path:
        """The model folder; a clear error when it is not given or does not exist."""
        if self.path is None or self.path == "":
            raise ExperimentConfigError(
                "no model checkpoint given: set --config.model.path=/path/to/hf_model_folder "
                "(a Hugging Face folder with config.json and *.safetensors), or "
                "--config.model.path=embedded for the packaged SmolLM2-135M"
            )
        if self.path == EMBEDDED:
            from rlpt_jax.models.embedded import smollm2_dir

            return smollm2_dir()
        path = Path(self.path).expanduser()
        if not (path / "config.json").is_file():
            raise ExperimentConfigError(
                f"model checkpoint {path} not found (no config.json there); set "
                f"--config.model.path to a Hugging Face model folder"
            )
        return path

    def resolve_tokenizer(self) -> Path:
        if self.tokenizer_path:
            return Path(self.tokenizer_path).expanduser()
        return self.resolve()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Steps and batching of the update.

    ``mini_batches``: updates per rollout batch (1 = strictly on-policy). ``micro_batch_size``:
    rows per gradient-accumulation micro-batch (0 = whole mini-batch at once).
    ``ntp_seq_len`` / ``ntp_batch_size``: sequence length and rows per step of the NTP
    baseline. ``kl_to_init``: log the KL to the initial policy every step (keeps a frozen
    copy of the initial weights; one extra forward). ``peak_tflops``: the devices' summed
    peak, for the model-FLOP utilisation metric (None: not reported). ``steps=0`` trains
    nothing: the run only evaluates its start model (``eval.at_start`` must be on), e.g. the
    cold start as a baseline arm of ``launch/compare.py``.

    ``tree_packing`` (AT²PO): the update step's forward packs each tree's unique tokens
    into one row under a tree mask, so that a prompt or turn shared by several leaves is
    computed once (same loss and gradient as the flat rows; ``bench/tree_train.py``).
    Micro-batches and devices then hold whole trees, and ``rollout.prompts_per_step`` is
    padded with empty trees to a multiple of (data × fsdp) × mini-batches × micro-batches.
    None (default): on for tree expansions when the model's attention skips masked tiles
    (``blockwise``, ``splash``: "auto" on GPU and TPU) and a micro-batch holds at least a
    tree's rows (``micro_batch_size`` 0 or >= ``tree.num_leaves``); off with ``xla``
    (CPU's "auto"), whose dense [S, S] mask over a whole tree costs more than the flat rows
    save, and with smaller micro-batches, where one whole tree per device would take more
    activation memory than the micro-batch the config asks for (the paper config's 8
    rows against 22 leaves; ``--dry_run`` shows the cost of forcing it on).
    """

    steps: int = 100
    mini_batches: int = 1
    micro_batch_size: int = 0
    logprob_chunk: int = 1024
    ntp_seq_len: int = 1024
    ntp_batch_size: int = 64
    kl_to_init: bool = True
    peak_tflops: float | None = None
    tree_packing: bool | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ExperimentConfigError(f"train.steps must be >= 0, got {self.steps}")
        if self.mini_batches < 1 or self.micro_batch_size < 0:
            raise ExperimentConfigError("train.mini_batches must be >= 1, micro_batch_size >= 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation every ``every`` steps (0 = only at the end).

    RLPT: next-segment accuracy (greedy, same judge) on ``num_prompts`` held-out samples and
    next-token loss on ``ntp_docs`` held-out documents (forgetting). AT²PO: greedy
    single-chain EM on ``num_prompts`` questions of each eval dataset and their average
    weighted by the number of questions (``eval/em_avg``). ``num_prompts=None``: every
    held-out sample / question (the AT²PO paper evaluates full test sets). SFT: assistant-token
    loss on held-out conversations. ``at_start``: also evaluate before the first step of a
    fresh run, so that the summary shows before and after.
    """

    every: int = 50
    at_start: bool = False
    num_prompts: int | None = 64
    ntp_docs: int = 16
    ntp_max_tokens: int = 256
    max_new_tokens: int = 512


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Search backend for AT²PO: ``bm25`` over a local corpus (default: the embedded
    Wikipedia intros) or ``http`` (a Search-R1-compatible retrieval server at ``url``).
    ``url`` belongs to ``http`` only: with ``bm25`` it is an error, not silently unused."""

    backend: str = "bm25"
    url: str | None = None
    timeout_s: float = 30.0
    retries: int = 3
    index_dir: str | None = None

    def __post_init__(self):
        if self.backend not in ("bm25", "http"):
            raise ExperimentConfigError(
                f"search.backend must be bm25 or http, got {self.backend!r}"
            )
        if self.backend == "http" and not self.url:
            raise ExperimentConfigError("search.backend='http' needs search.url")
        # A URL the bm25 backend ignores means the run would search the wrong corpus.
        if self.backend != "http" and self.url:
            raise ExperimentConfigError(
                f"search.url={self.url!r} is set but search.backend={self.backend!r} never "
                "uses it; add --config.search.backend=http to search that retriever, or "
                "leave search.url unset for the local BM25 index"
            )


@dataclasses.dataclass(frozen=True)
class MathProblemsConfig:
    """How many math problems to read and check, for ``qa.math`` (AT²PO's
    ``qa.reward="math"``) and ``rlvr`` alike (the loader is
    :func:`rlpt_jax.data.math_problems.build_math_data`): ``train_size`` problems per
    generator (jsonl: at most this many lines, 0 = all), ``heldout`` problems per train
    source kept out of training for evaluation, ``seed`` seeds the problems, not the run,
    so every seed of a comparison sees the same ones; ``verifier``: the answer check's
    time and size limits."""

    train_size: int = 10_000
    heldout: int = 64
    seed: int = 0
    verifier: VerifierConfig = dataclasses.field(default_factory=VerifierConfig)

    def __post_init__(self):
        if self.heldout < 0 or self.train_size < 0:
            raise ValueError(
                f"heldout and train_size must be >= 0, got {self.heldout}, {self.train_size}"
            )


QA_REWARDS = ("em", "math")


@dataclasses.dataclass(frozen=True)
class QAConfig:
    """Questions and the answer check for AT²PO.

    ``reward="em"`` (the paper): ``train`` and ``eval`` are QA dataset names
    (``embedded``, ``embedded_pairs``, ``fanoutqa``, with a ``:<split>`` for the embedded
    ones) or FlashRAG jsonl paths, and the boxed answer is scored
    by exact match. ``reward="math"``: ``train`` and ``eval`` are math problem sources as
    RLVR reads them (a jsonl with ``problem`` and ``answer``, or a reasoning-gym generator
    ``rg:<name>[:key=value,...]``; ``qa.math`` sizes them), held out: ``qa.math.heldout``
    problems of ``train`` plus every ``eval`` source, and the boxed answer is checked by
    the math verifier (a generator's own scorer for its problems); the ``em`` metrics
    then report that verdict. ``format_penalty`` is the invalid-format reward either way;
    ``system_prompt`` the instructions (a ``{question}`` field puts the question inside).
    """

    train: str = "embedded"
    eval: tuple[str, ...] = ("embedded",)
    format_penalty: float = -1.0
    system_prompt: str | None = None
    reward: str = "em"
    math: MathProblemsConfig = dataclasses.field(default_factory=MathProblemsConfig)

    def __post_init__(self):
        if self.reward not in QA_REWARDS:
            raise ExperimentConfigError(
                f"qa.reward must be one of {list(QA_REWARDS)}, got {self.reward!r}"
            )


@dataclasses.dataclass(frozen=True)
class RLVRConfig(MathProblemsConfig):
    """RLVR (``method="rlvr"``): the configured loss on problems with checkable answers.

    ``train``: problem sources (``rlpt_jax.data.math_problems``), jsonl files with
    ``problem`` and ``answer`` fields or reasoning-gym generators
    ``rg:<name>[:key=value,...]``; ``eval``: further held-out sources (an AIME jsonl);
    how many are read and how they are checked: :class:`MathProblemsConfig`.
    ``instruction`` follows each problem; ``response_prefix`` starts every response (put
    after the prompt, and in front of the completion when it is checked): a small model
    that does not yet box its answers can be started at ``"The answer is \\boxed{"``.
    ``format_penalty`` is the reward of a response with no ``\\boxed{}`` (0: a plain
    1/0 reward). Evaluation: ``pass_samples`` samples per held-out problem at
    ``eval_temperature`` / ``eval_top_p`` (the paper: 64, 0.6, 0.95) give Pass@k for
    k = 1, 2, 4, …, ``pass_samples``.
    """

    train: tuple[str, ...] = ("rg:chain_sum",)
    eval: tuple[str, ...] = ()
    instruction: str = "Please reason step by step, and put your final answer within \\boxed{}."
    response_prefix: str = ""
    format_penalty: float = 0.0
    pass_samples: int = 8
    eval_temperature: float = 0.6
    eval_top_p: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        if self.pass_samples < 1:
            raise ExperimentConfigError("rlvr.pass_samples must be >= 1")
        if self.eval_temperature < 0 or not 0 < self.eval_top_p <= 1:
            raise ExperimentConfigError(
                "rlvr.eval_temperature must be >= 0 and rlvr.eval_top_p in (0, 1]"
            )


@dataclasses.dataclass(frozen=True)
class OutageConfig:
    """What a run does when a service it depends on fails: the retriever (AT²PO, and the
    demonstrations of its cold start) or the HTTP judge (RLPT). One policy for both,
    applied per training step to the requests that failed after the client's retries.

    * ``max_failure_fraction`` (default 0.5): a step in which more than this share of a
      service's requests failed is not trained on. It is skipped: no update, its data
      consumed, ``outage/skipped_steps`` 1 for it. The HTTP judge's own
      ``judge.http.max_failure_fraction`` also fails a step.
    * ``max_failed_steps`` (default 3): after this many skipped steps in a row the run
      saves a checkpoint and stops with an error naming the service's URL and each
      skipped step's failure counts; rerun the same command to resume once it is back.

    Below the fraction, an AT²PO leaf whose search failed is masked out of the loss and of
    its tree's credit, as if it had not been sampled (``outage/masked_leaves``): an outage
    is not the policy's mistake, and a −1 for it would teach the policy not to search.
    Every step logs ``outage/<service>_requests`` and ``outage/<service>_failures``,
    zeros included.
    """

    max_failure_fraction: float = 0.5
    max_failed_steps: int = 3

    def __post_init__(self):
        if not 0.0 <= self.max_failure_fraction < 1.0:
            raise ExperimentConfigError(
                "outage.max_failure_fraction must be in [0, 1) (a step whose requests all "
                f"failed is never trained on), got {self.max_failure_fraction}"
            )
        if self.max_failed_steps < 1:
            raise ExperimentConfigError(
                f"outage.max_failed_steps must be >= 1, got {self.max_failed_steps}"
            )


@dataclasses.dataclass(frozen=True)
class ColdStartConfig:
    """The SFT stage run before this experiment (``rlpt_jax.train.loop.with_cold_start``).

    It trains on the parent experiment's own data settings (model, corpus, segments,
    tasks, QA set, environment) with ``method="sft"`` and the settings below, and the
    parent starts from its export. ``seed`` is the cold start's own, so every seed of a
    comparison starts from the same cold-start model.
    """

    seed: int = 0
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    method: str = "rlpt"
    seed: int = 0
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)
    clean: CleanConfig = dataclasses.field(default_factory=CleanConfig)
    segments: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)
    tasks: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    chat_template: bool = True
    judge: JudgeConfig = dataclasses.field(default_factory=JudgeConfig)
    # Generative judge: a HF folder (None = the policy's own initial weights, frozen).
    judge_model_path: str | None = None
    judge_max_new_tokens: int = 64
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    advantage: AdvantageConfig = dataclasses.field(default_factory=AdvantageConfig)
    dapo: DAPOConfig = dataclasses.field(default_factory=DAPOConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    outage: OutageConfig = dataclasses.field(default_factory=OutageConfig)
    export_hf: bool = True
    tree: TreeConfig = dataclasses.field(default_factory=TreeConfig)
    credit: CreditConfig = dataclasses.field(default_factory=CreditConfig)
    env: SearchEnvConfig = dataclasses.field(default_factory=SearchEnvConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    # The sandbox of the Python tool (env.tools containing "python"), as search is the
    # search tool's backend.
    python_tool: PythonToolConfig = dataclasses.field(default_factory=PythonToolConfig)
    qa: QAConfig = dataclasses.field(default_factory=QAConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    rlvr: RLVRConfig = dataclasses.field(default_factory=RLVRConfig)
    cold_start: ColdStartConfig | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ExperimentConfigError(
                f"unknown method {self.method!r}; valid methods: {list(METHODS)}"
            )
        if self.train.steps == 0 and not self.eval.at_start:
            raise ExperimentConfigError(
                "train.steps=0 trains nothing and only evaluates the start model, so it "
                "needs eval.at_start=True (e.g. a compare.py arm that measures the cold start)"
            )


def _to_plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def _build(cls: type, values: Any, where: str):
    """Instantiate dataclass ``cls`` from a mapping, recursing into dataclass fields."""
    values = _to_plain(values)
    if values is None:
        return cls()
    if dataclasses.is_dataclass(values):
        return values
    if not isinstance(values, dict):
        raise ExperimentConfigError(
            f"config.{where} must be a mapping, got {type(values).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ExperimentConfigError(
            f"unknown config field(s) {', '.join(f'config.{where}.{u}' for u in unknown)}; "
            f"valid fields of config.{where or '<root>'}: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        sub = _dataclass_type(hints[name])
        key = f"{where}.{name}" if where else name
        if value is None and _optional(hints[name]):
            kwargs[name] = None
        elif sub is not None:
            kwargs[name] = _build(sub, value, key)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ExperimentConfigError):
            raise
        raise ExperimentConfigError(f"config.{where or '<root>'}: {e}") from e


def _optional(hint) -> bool:
    return type(None) in typing.get_args(hint)


def _dataclass_type(hint) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_config_dict(config: Any) -> ExperimentConfig:
    """Validated :class:`ExperimentConfig` from a ``ConfigDict`` (or plain dict)."""
    return _build(ExperimentConfig, config, "")
