"""Config of the training stages: what both set the same way (``EngineConfig``), fine-tuning (``--sft.*``) and the
RL refinement (``--rl.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from secondthought.config.checks import PRECISIONS, ConfigError, check_choice, check_ranges


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
        check_choice(f"{self._flag}.zero_stage", self.zero_stage, (0, 1, 2, 3))
        check_choice(f"{self._flag}.precision", self.precision, PRECISIONS)
        check_choice(f"{self._flag}.tracking", self.tracking, ("tensorboard", "mlflow", "wandb"))
        check_choice(f"{self._flag}.placement_strategy", self.placement_strategy, ("PACK", "SPREAD", "STRICT_SPREAD"))
        check_ranges(self._flag, self, log_every="[1, inf)", max_failures="[0, inf)")

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
    direct_targets: float = 0.5
    """With chains: the share of training rows (drawn anew each epoch) whose chain is cut out, so that the model
    also learns to write the target straight after the prompt. Serving's default answer (``derived``) is that
    target with the exact chain of edits from the source to it (README, Answer quality); 0: chains only."""
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
        check_ranges("--sft", self, epochs="[1, inf)", micro_batch_size="[1, inf)", grad_accum="[1, inf)",
                     lr="(0, inf)", eval_every="[1, inf)", patience="[0, inf)", num_workers="[1, inf)",
                     bucket_window="[1, inf)", warmup_fraction="[0, 1)", min_lr_ratio="[0, 1]", max_steps="[1, inf)",
                     max_train_rows="[1, inf)", max_eval_rows="[1, inf)", direct_targets="[0, 1]")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("--sft.offload_params needs --sft.zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("--sft.offload_optimizer needs --sft.zero_stage 1, 2 or 3")



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
        at_least_one = ("iterations", "prompts_per_iteration", "max_new_tokens", "rollout_workers",
                        "rollout_batch_size", "learner_workers", "ppo_epochs", "minibatch_size", "micro_batch_size",
                        "disc_steps", "checkpoint_every", "kl_horizon")
        check_ranges("--rl", self, **dict.fromkeys(at_least_one, "[1, inf)"))
        # temperature 0 would be greedy decoding, whose log-probabilities (PPO ratios, KL) are not defined
        check_ranges("--rl", self, **dict.fromkeys(("lr", "disc_lr", "clip", "disc_clip", "temperature"), "(0, inf)"))
        check_ranges("--rl", self, **dict.fromkeys(("kl_coef", "vf_coef", "validity_weight", "max_restarts",
                                                    "disc_warmup_epochs"), "[0, inf)"))
        check_ranges("--rl", self, gamma="[0, 1]", lam="[0, 1]", top_p="(0, 1]")
        check_choice("--rl.kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        check_choice("--rl.decoding", self.decoding, ("free", "constrained"))
        if self.reward not in ("adversarial", "validity") and ":" not in self.reward:
            raise ConfigError(f"--rl.reward must be adversarial, validity or module:function, got {self.reward!r}")
        per_learner, rest = divmod(self.minibatch_size, self.learner_workers)
        if rest or per_learner % self.micro_batch_size:
            raise ConfigError(f"--rl.minibatch_size {self.minibatch_size} must split into --rl.learner_workers "
                              f"{self.learner_workers} x a multiple of --rl.micro_batch_size {self.micro_batch_size}")
        if self.prompts_per_iteration % self.minibatch_size:
            raise ConfigError(f"--rl.prompts_per_iteration {self.prompts_per_iteration} must be a multiple of "
                              f"--rl.minibatch_size {self.minibatch_size}")
        check_choice("--rl.fault_injection_actor", self.fault_injection_actor,
                     ("rollout", "reference", "learner", "discriminator"))

