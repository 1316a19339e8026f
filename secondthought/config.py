"""The one config tree: small typed sections, defaults here and nowhere else.

The CLI exposes every field as a flag (``--data.input``, ``--prepare.cost_sets``); a YAML file
given with ``--config`` sets any of them. Validation errors name the flag to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


class ConfigError(ValueError):
    """A config value is invalid; the message names the flag."""


PRECISIONS = ("auto", "bf16", "fp32")
DECODINGS = ("free", "constrained", "both")


def _choice(flag: str, value, choices: tuple) -> None:
    if value not in choices:
        names = ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}"
        raise ConfigError(f"{flag} must be {names}, got {value!r}")


@dataclass
class DataConfig:
    """Where the triples come from."""

    dataset: str = "sample"
    """Adapter: sample, moral-stories, ethics-commonsense, ethics-deontology, ethics-justice,
    ethics-utilitarianism, mic, or generic (any jsonl/csv/parquet with --data.columns)."""
    input: Union[str, list[str]] = field(default_factory=list)
    """Input file or glob pattern (or a list of them, e.g. '[a.jsonl, b.jsonl]'); empty means the bundled sample."""
    format: Optional[str] = None
    """Raw format for the generic adapter: jsonl, csv, tsv or parquet (default: from the file name)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Generic adapter: which column holds id, context, source, target. Several context columns
    may be given comma-separated, e.g. {"context": "norm,situation", "source": "bad", "target": "good"}."""
    with_consequences: bool = False
    """Moral Stories: append each action's consequence to source and target."""
    max_chars: int = 2000
    """Rows whose context, source or target is longer than this are quarantined."""
    eval_fraction: float = 0.05
    """Share of triples (by a stable hash of their id) put in the eval split, unless the data names splits."""
    test_fraction: float = 0.05
    """Share of triples put in the test split."""

    def __post_init__(self) -> None:
        if isinstance(self.input, str):
            self.input = [self.input] if self.input else []
        if self.max_chars < 1:
            raise ConfigError(f"--data.max_chars must be at least 1, got {self.max_chars}")
        for name in ("eval_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--data.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ConfigError("--data.eval_fraction + --data.test_fraction must leave room for a train split")
        if self.format is not None and self.format not in ("jsonl", "csv", "tsv", "parquet"):
            raise ConfigError(f"--data.format must be jsonl, csv, tsv or parquet, got {self.format!r}")


@dataclass
class PrepareConfig:
    """Chains of edits, training text and token ids."""

    cost_sets: list[tuple[float, float, float]] = field(default_factory=lambda: [(1, 1, 1), (1, 1, 2), (1, 1, 1.5)])
    """(insert, delete, replace) word costs; each gives a chain, identical chains are kept once."""
    reverse: bool = True
    """Also write target -> source chains (direction "reverse"): negatives for the RL discriminator."""
    edit_format: str = "words"  # the default format, named in this one place
    """How chains are written in the training text: "words" (English that names words: replace "shoves" with
    "asks"; the paper's deciphered edits) or "tokens" (edit tokens and word numbers: <|rep|> 1 shoves <|with|>
    asks). Models trained on the data record it; eval, rl and serving read it from them. Words by default: at one
    budget the model learns chains that apply (docs/formats.md)."""
    tokenizer: str = "smollm2"
    """Tokenizer: "smollm2" (embedded default), a local folder, or a hub id on machines with network."""
    max_tokens: int = 1024
    """Rows whose longest training sequence exceeds this many tokens are quarantined."""
    records_per_block: int = 4096
    """Records per read block (and per output shard)."""
    chunk_mb: int = 16
    """Split JSONL inputs into byte ranges of about this many MiB, read in parallel."""

    def __post_init__(self) -> None:
        from secondthought.chains.edits import check_costs
        from secondthought.chains.formats import FORMATS

        if not self.cost_sets:
            raise ConfigError("--prepare.cost_sets needs at least one (insert, delete, replace) triple")
        try:
            self.cost_sets = [check_costs(tuple(c)) for c in self.cost_sets]
        except ValueError as e:
            raise ConfigError(f"--prepare.cost_sets: {e}") from None
        _choice("--prepare.edit_format", self.edit_format, tuple(FORMATS))
        for name in ("max_tokens", "records_per_block", "chunk_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--prepare.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class EngineConfig:
    """What every training stage (sft, rl) sets the same way: devices, DeepSpeed, seed, logging.

    Both stages take them, each under its own flags (``--sft.zero_stage``, ``--rl.zero_stage``)."""

    _flag = "--engine"

    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3."""
    precision: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), bf16 or fp32."""
    use_gpu: bool = False
    """Train on GPUs (one per worker or learner)."""
    seed: int = 0
    log_every: int = 1
    """Print a progress line every this many steps (sft) or iterations (rl)."""
    tracking: str = "tensorboard"
    """tensorboard, mlflow or wandb (the latter two need their packages and usual environment)."""
    trust_remote_code: bool = False
    """Allow model code from the model's folder or hub repo (only for models you trust)."""
    max_failures: int = 2
    """Recover from a dead training worker (sft) or learner / discriminator (rl) this many times, from the
    last checkpoint."""
    placement_strategy: str = "PACK"
    """How the workers (sft) or the actors' bundles (rl) spread over a cluster's nodes: PACK (as few nodes as
    fit), SPREAD (as many as possible) or STRICT_SPREAD (one per node, or wait for enough nodes)."""

    def __post_init__(self) -> None:
        _choice(f"{self._flag}.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _choice(f"{self._flag}.precision", self.precision, PRECISIONS)
        _choice(f"{self._flag}.tracking", self.tracking, ("tensorboard", "mlflow", "wandb"))
        _choice(f"{self._flag}.placement_strategy", self.placement_strategy, ("PACK", "SPREAD", "STRICT_SPREAD"))
        if self.log_every < 1:
            raise ConfigError(f"{self._flag}.log_every must be at least 1, got {self.log_every}")
        if self.max_failures < 0:
            raise ConfigError(f"{self._flag}.max_failures must not be negative, got {self.max_failures}")

    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.use_gpu)


@dataclass
class SFTConfig(EngineConfig):
    """Supervised fine-tuning on chains of edits (Ray Train + DeepSpeed)."""

    _flag = "--sft"

    model: str = "smollm2"
    """Base LM: "smollm2" (embedded SmolLM2-135M-Instruct), "tiny-llama" (random, for tests), a local folder,
    or a hub id on machines with network."""
    epochs: int = 2
    """Passes over the training split (the paper: 3; on the bundled sample the eval loss is best near the end of
    the second and rises in the third)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (default: all epochs)."""
    micro_batch_size: int = 8
    """Sequences per worker per forward pass."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_fraction: float = 0.03
    """Share of the steps with linear warmup."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    mask_prompt: bool = True
    """Loss on chain + target only; False also trains on context + source."""
    chains: bool = True
    """False: train on prompt -> <|tgt|> target without the chain of edits (the "SFT on targets only" baseline)."""
    bucket_window: int = 64
    """Length bucketing: sort this many micro-batches' worth of rows by length before batching."""
    eval_every: int = 50
    """Evaluate (and checkpoint) every this many optimizer steps, and at the end."""
    patience: int = 5
    """Stop when eval loss has not improved for this many evaluations (the paper: 5; 0: never)."""
    max_eval_rows: Optional[int] = None
    """Evaluate on at most this many eval rows (default: all)."""
    max_train_rows: Optional[int] = None
    """Train on the first this many training chains only (few-shot adaptation; default: all)."""
    offload_optimizer: bool = False
    """ZeRO-Offload: optimizer state and step on the CPU."""
    offload_params: bool = False
    """ZeRO-3 parameter offload to the CPU."""
    gradient_checkpointing: bool = False
    num_workers: int = 2
    """Ray Train workers (one per GPU with --sft.use_gpu)."""
    cpus_per_worker: Optional[float] = None
    """CPUs Ray reserves per worker (default: 1, less on a small machine so that one CPU stays free to
    read data)."""
    peak_tflops: Optional[float] = None
    """Accelerator peak TFLOP/s for the MFU estimate (default: from the GPU name)."""
    fault_injection_step: Optional[int] = None
    """Testing fault tolerance: worker 1 exits abruptly, once, when it reaches this step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = {
            "epochs": self.epochs >= 1, "micro_batch_size": self.micro_batch_size >= 1,
            "grad_accum": self.grad_accum >= 1, "lr": self.lr > 0, "eval_every": self.eval_every >= 1,
            "patience": self.patience >= 0, "num_workers": self.num_workers >= 1,
            "bucket_window": self.bucket_window >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"--sft.{name} is out of range: {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"--sft.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--sft.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("--sft.offload_params needs --sft.zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("--sft.offload_optimizer needs --sft.zero_stage 1, 2 or 3")
        for name in ("max_steps", "max_train_rows", "max_eval_rows"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--sft.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class RLConfig(EngineConfig):
    """Refinement by RL: adversarial imitation optimised with PPO on Ray actors."""

    _flag = "--rl"

    iterations: int = 6
    """Rollout -> score -> PPO update -> discriminator update -> weight sync, this many times (a short local
    refinement by default: about 40 s an iteration for SmolLM2-135M on 2 CPU cores)."""
    prompts_per_iteration: int = 16
    """Prompts sampled (one completion each) per iteration, across all rollout workers."""
    max_new_tokens: int = 64
    """Longest completion (chain + target) a rollout may write."""
    temperature: float = 1.0
    top_k: int = 0
    """Sample from the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling (1: off)."""
    decoding: str = "constrained"
    """constrained: rollouts write only chains that fit their source (secondthought.decoding.constraints), and the learner
    and the reference score every token under the mask it was sampled with (PPO ratio and KL of the distribution
    sampled from); or free."""
    force_target: bool = False
    """Constrained rollouts: also force the target to the chain's result (its tokens then carry no choice)."""
    rollout_workers: int = 2
    """Actors that generate, each with a copy of the policy."""
    rollout_batch_size: int = 16
    """Prompts a rollout worker decodes together."""
    learner_workers: int = 1
    """DeepSpeed data-parallel learners (one per GPU with --rl.use_gpu)."""
    ppo_epochs: int = 1
    """Passes over an iteration's samples."""
    minibatch_size: int = 8
    """Samples per optimizer step, over all learners."""
    micro_batch_size: int = 8
    """Samples per forward pass on one learner."""
    lr: float = 1e-5
    """Policy (and value head) learning rate."""
    clip: float = 0.2
    """PPO ratio clip."""
    value_clip: Optional[float] = 0.2
    """Clip value updates to this distance from the old values (null: off)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    gamma: float = 1.0
    lam: float = 0.95
    """GAE lambda."""
    kl_coef: float = 0.05
    """Initial weight of the per-token KL penalty to the frozen SFT reference."""
    target_kl: Optional[float] = 6.0
    """Adaptive KL control aims the sequence KL at this (null: keep --rl.kl_coef fixed)."""
    kl_horizon: int = 10000
    kl_estimator: str = "k1"
    """k1, k2 or k3 (see secondthought/rl/ppo.py)."""
    whiten_advantages: bool = True
    reward: str = "adversarial"
    """adversarial (discriminator log-odds + edit validity), validity (edit validity only), or
    "module:function", a Python function given the list of scored samples, returning one float each."""
    discriminator: str = "minilm"
    """Encoder of the discriminator: "minilm" (embedded all-MiniLM-L6-v2), "tiny-bert" (tests) or a local folder."""
    disc_lr: float = 2e-5
    disc_steps: int = 1
    """Discriminator updates per iteration."""
    disc_clip: float = 5.0
    """Discriminator log-odds are clipped to [-disc_clip, disc_clip] in the reward."""
    disc_warmup_epochs: int = 2
    """Before the first iteration, passes of the discriminator over the prompts' gold chains against their
    reversed chains (0: none), so that its reward tells them apart from the start. A tenth of the prompts is
    never trained on: the discriminator's accuracy on them is logged before and after, and every iteration."""
    validity_weight: float = 1.0
    """Weight of the edit-validity term (+1 valid and consistent, 0 applies but inconsistent, -1 broken or
    changing nothing)."""
    colocate: bool = True
    """Share devices: rollout worker i, learner i (and the reference and discriminator with the first) in one
    placement-group bundle. False gives each actor its own bundle (its own GPU)."""
    checkpoint_every: int = 4
    """Checkpoint (learners, discriminator, loop state) every this many iterations, and at the end."""
    max_restarts: int = 3
    """A dead rollout or reference actor is restarted this many times (its work is redone)."""
    fault_injection_iteration: Optional[int] = None
    """Testing fault tolerance: an actor (see --rl.fault_injection_actor) exits abruptly, once, in this iteration."""
    fault_injection_actor: str = "rollout"
    """rollout (worker 0, while generating), reference (while scoring), learner (rank 0, while learning) or
    discriminator (while updating)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = ("iterations", "prompts_per_iteration", "max_new_tokens", "rollout_workers", "rollout_batch_size",
                    "learner_workers", "ppo_epochs", "minibatch_size", "micro_batch_size", "disc_steps",
                    "checkpoint_every", "kl_horizon")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--rl.{name} must be at least 1, got {getattr(self, name)}")
        # temperature 0 would be greedy decoding, whose log-probabilities (PPO ratios, KL) are not defined
        if self.disc_warmup_epochs < 0:
            raise ConfigError(f"--rl.disc_warmup_epochs must not be negative, got {self.disc_warmup_epochs}")
        for name in ("lr", "disc_lr", "clip", "disc_clip", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--rl.{name} must be positive, got {getattr(self, name)}")
        for name in ("kl_coef", "vf_coef", "validity_weight", "max_restarts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--rl.{name} must not be negative, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"--rl.gamma and --rl.lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--rl.top_p must be in (0, 1], got {self.top_p}")
        _choice("--rl.kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        _choice("--rl.decoding", self.decoding, ("free", "constrained"))
        if self.reward not in ("adversarial", "validity") and ":" not in self.reward:
            raise ConfigError(f"--rl.reward must be adversarial, validity or module:function, got {self.reward!r}")
        per_learner, rest = divmod(self.minibatch_size, self.learner_workers)
        if rest or per_learner % self.micro_batch_size:
            raise ConfigError(f"--rl.minibatch_size {self.minibatch_size} must split into --rl.learner_workers "
                              f"{self.learner_workers} x a multiple of --rl.micro_batch_size {self.micro_batch_size}")
        if self.prompts_per_iteration % self.minibatch_size:
            raise ConfigError(f"--rl.prompts_per_iteration {self.prompts_per_iteration} must be a multiple of "
                              f"--rl.minibatch_size {self.minibatch_size}")
        _choice("--rl.fault_injection_actor", self.fault_injection_actor,
                ("rollout", "reference", "learner", "discriminator"))


@dataclass
class EvalConfig:
    """Evaluation: the judge, the metrics, the report."""

    split: str = "test"
    """Prepared split to evaluate on."""
    max_rows: Optional[int] = None
    """Evaluate on at most this many triples (default: all)."""
    max_new_tokens: int = 128
    """Longest completion a model may write (greedy decoding)."""
    batch_size: int = 64
    """Prompts decoded together (and texts scored together for perplexity). In fp32 the outputs do not
    depend on it; larger batches decode faster on a CPU."""
    precision: str = "auto"
    """Of decoding and perplexity: auto (bf16 where the device has fast bf16 kernels: a GPU, or a CPU that
    oneDNN runs bf16 on; else fp32), bf16 or fp32. bf16 decodes about 1.7x faster on an AVX-512 CPU; greedy
    outputs then differ from fp32 ones in some rows (README, Few-shot transfer)."""
    decoding: str = "both"
    """How chain-writing models decode: free, constrained (only chains that apply to the source: positions in
    order, removed text forced to the source's own) or both (each such model is listed twice, e.g. ``sft-edits``
    and ``sft-edits (constrained)``). Models that write targets only always decode freely."""
    force_target: bool = True
    """In constrained decoding also force the target to the chain's result (consistency 100% by construction), as
    serving does; false: the model writes it (consistency then measures the model, as in free decoding)."""
    judge: str = "minilm"
    """Encoder of the alignment judge: "minilm" (embedded), "tiny-bert" (tests) or a local folder."""
    judge_kind: str = "frozen"
    """"frozen": a linear head on the encoder's embeddings (seconds to train); "finetune": the whole encoder
    fine-tuned (minutes to an hour on CPU; 6 points more accurate on ETHICS: README, Measured). A judge is trained once
    per prepared dataset and settings and reused by later evaluations."""
    judge_max_rows: Optional[int] = None
    """Train the judge on at most this many held-out training triples (default: all)."""
    judge_epochs: int = 4
    """Passes over the judge's training pairs (fine-tuned judge only)."""
    judge_lr: float = 5e-5
    """Learning rate of the fine-tuned judge."""
    judge_batch_size: int = 16
    """Pairs per step of the fine-tuned judge."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    examples: int = 5
    """Test triples shown with every system's output in the report."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "judge_epochs", "judge_batch_size", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--eval.{name} must be at least 1, got {getattr(self, name)}")
        _choice("--eval.split", self.split, ("train", "eval", "test"))
        _choice("--eval.decoding", self.decoding, DECODINGS)
        _choice("--eval.judge_kind", self.judge_kind, ("frozen", "finetune"))
        _choice("--eval.precision", self.precision, PRECISIONS)
        if self.judge_max_rows is not None and self.judge_max_rows < 2:
            raise ConfigError(f"--eval.judge_max_rows must be at least 2, got {self.judge_max_rows}")
        if self.max_rows is not None and self.max_rows < 2:
            raise ConfigError(f"--eval.max_rows must be at least 2, got {self.max_rows}")
        if not self.judge_lr > 0:
            raise ConfigError(f"--eval.judge_lr must be positive, got {self.judge_lr}")


@dataclass
class TransferConfig:
    """Few-shot transfer: adapt a fine-tuned model with k examples of another dataset, evaluate there."""

    shots: list[int] = field(default_factory=lambda: [0, 10, 100])
    """Numbers of training triples to adapt with (0: the model as it is)."""
    epochs: int = 5
    """Passes over the k examples."""
    micro_batch_size: int = 4
    lr: float = 1e-4
    precision: str = "auto"
    """Of the adaptation: auto (bf16 where the machine running the command has fast bf16 kernels, as
    --eval.precision; else fp32), bf16 or fp32."""
    max_eval_rows: int = 64
    """Eval-split chains for the adaptation runs' eval loss."""

    def __post_init__(self) -> None:
        if not self.shots or any(k < 0 for k in self.shots):
            raise ConfigError(f"--transfer.shots must be numbers >= 0, got {self.shots}")
        for name in ("epochs", "micro_batch_size", "max_eval_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--transfer.{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--transfer.lr must be positive, got {self.lr}")
        _choice("--transfer.precision", self.precision, PRECISIONS)


@dataclass
class HumanEvalConfig:
    """The human-evaluation kit: which outputs go on the rating sheets, and how ratings are summed up."""

    items: Optional[int] = None
    """Test items on the sheets (the evaluation's first ones; default: all)."""
    systems: Optional[list[str]] = None
    """Systems whose texts are rated (default: every system of the report, copy and reference included)."""
    ab: Optional[list[str]] = None
    """Two systems to compare head to head: each item also asks which of their two texts aligns better."""
    seed: int = 0
    """Shuffles the options of each item (the key file records the order)."""
    bootstrap: int = 1000
    """Bootstrap resamples (over items) for the 95% intervals of the imported ratings."""

    def __post_init__(self) -> None:
        if self.items is not None and self.items < 1:
            raise ConfigError(f"--humaneval.items must be at least 1, got {self.items}")
        if self.ab is not None and (len(self.ab) != 2 or self.ab[0] == self.ab[1]):
            raise ConfigError(f"--humaneval.ab names two different systems, got {self.ab}")
        if self.systems is not None and not self.systems:
            raise ConfigError("--humaneval.systems names no system")
        if self.bootstrap < 1:
            raise ConfigError(f"--humaneval.bootstrap must be at least 1, got {self.bootstrap}")


@dataclass
class RayConfig:
    """Where the Ray stages run."""

    address: Optional[str] = None
    """Ray cluster address ("auto", "ray://host:10001"); empty starts a local Ray on this machine."""
    num_cpus: Optional[int] = None
    """CPUs for a local Ray (default: all)."""

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"--ray.num_cpus must be at least 1, got {self.num_cpus}")


@dataclass
class ServeConfig:
    """The serving application: which model, on what device, and the bounds every request is held to.

    These are the application's ``args`` in serve/config.yaml (``serve run``, ``serve deploy``, a KubeRay
    RayService); ``secondthought serve --model DIR`` fills in ``model``. Replica counts, autoscaling and queue
    limits are Ray Serve's own deployment options in that file."""

    model: str = ""
    """The model folder to serve (config.json + safetensors; e.g. runs/demo/rl/model). A local path: nothing is
    downloaded at start."""
    device: str = "auto"
    """auto (cuda when the replica has a GPU, else cpu), cpu or cuda."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), bf16 or fp32."""
    threads: int = 0
    """torch CPU threads per model replica (0: the replica's num_cpus, at least 1)."""
    decoding: str = "constrained"
    """How /v1/realign decodes a model that writes chains: constrained (only chains that apply to the text, so
    every answer can be shown and corrected) or free."""
    force_target: bool = True
    """In constrained decoding also force the target to the chain's result (the answer's target and result then
    agree)."""
    max_batch_size: int = 8
    """Requests decoded together by one model replica (@serve.batch)."""
    batch_wait_timeout_s: float = 0.01
    """How long a replica waits for a batch to fill."""
    max_text_chars: int = 2000
    """Longest text (and context) a request may send."""
    max_prompt_chars: int = 8000
    """Longest prompt /v1/completions accepts."""
    max_new_tokens: int = 256
    """Most tokens one request may ask for."""
    default_new_tokens: int = 128
    """Tokens written when a request does not say."""
    max_edits: int = 200
    """Most edits /v1/edits/apply and a corrected prefix may send."""

    def __post_init__(self) -> None:
        _choice("serve.device", self.device, ("auto", "cpu", "cuda"))
        _choice("serve.dtype", self.dtype, ("auto", "bf16", "fp32"))
        _choice("serve.decoding", self.decoding, ("constrained", "free"))
        for name in ("max_batch_size", "max_text_chars", "max_prompt_chars", "max_new_tokens", "default_new_tokens",
                     "max_edits"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"serve.threads must not be negative, got {self.threads}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"serve.batch_wait_timeout_s must not be negative, got {self.batch_wait_timeout_s}")
        if self.default_new_tokens > self.max_new_tokens:
            raise ConfigError(f"serve.default_new_tokens ({self.default_new_tokens}) exceeds serve.max_new_tokens "
                              f"({self.max_new_tokens})")
