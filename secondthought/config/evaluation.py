"""Config of the evaluation (``--eval.*``), few-shot transfer (``--transfer.*``) and the human-evaluation kit
(``--humaneval.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from secondthought.config.checks import PRECISIONS, ConfigError, check_choice, check_ranges


DECODINGS = ("free", "constrained", "derived")


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
    decoding: Union[str, list[str]] = field(default_factory=lambda: list(DECODINGS))
    """How chain-writing models decode, any of: free; constrained (only chains that apply to the source: positions
    in order, removed text forced to the source's own); derived (the model writes its target straight after the
    prompt, the chain is the exact one from the source to it: for models trained with ``--sft.direct_targets``).
    Each model is listed once per mode, e.g. ``sft-edits``, ``sft-edits (constrained)``, ``sft-edits (derived)``;
    "both" is free and constrained. Models that write targets only always decode freely; the served model's row is
    always there in the mode the server answers with by default."""
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
        check_ranges("--eval", self, **dict.fromkeys(("max_new_tokens", "batch_size", "judge_epochs",
                                                      "judge_batch_size", "bootstrap"), "[1, inf)"))
        check_choice("--eval.split", self.split, ("train", "eval", "test"))
        modes: list[str] = []
        for mode in self.decoding.split(",") if isinstance(self.decoding, str) else self.decoding:
            check_choice("--eval.decoding", mode.strip(), DECODINGS + ("both",))
            modes += ["free", "constrained"] if mode.strip() == "both" else [mode.strip()]
        self.decoding = list(dict.fromkeys(modes))
        check_choice("--eval.judge_kind", self.judge_kind, ("frozen", "finetune"))
        check_choice("--eval.precision", self.precision, PRECISIONS)
        check_ranges("--eval", self, judge_max_rows="[2, inf)", max_rows="[2, inf)", judge_lr="(0, inf)")



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
        check_ranges("--transfer", self, epochs="[1, inf)", micro_batch_size="[1, inf)", max_eval_rows="[1, inf)",
                     lr="(0, inf)")
        check_choice("--transfer.precision", self.precision, PRECISIONS)



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
        check_ranges("--humaneval", self, items="[1, inf)", bootstrap="[1, inf)")
        if self.ab is not None and (len(self.ab) != 2 or self.ab[0] == self.ab[1]):
            raise ConfigError(f"--humaneval.ab names two different systems, got {self.ab}")
        if self.systems is not None and not self.systems:
            raise ConfigError("--humaneval.systems names no system")

