"""Config of the data: where the triples come from (``--data.*``), and how they become training text
(``--prepare.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from secondthought.config.checks import ConfigError, check_choice, check_ranges


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
        check_ranges("--data", self, max_chars="[1, inf)", eval_fraction="[0, 1)", test_fraction="[0, 1)")
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ConfigError("--data.eval_fraction + --data.test_fraction must leave room for a train split")
        if self.format is not None:
            check_choice("--data.format", self.format, ("jsonl", "csv", "tsv", "parquet"))



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
        check_choice("--prepare.edit_format", self.edit_format, tuple(FORMATS))
        check_ranges("--prepare", self, max_tokens="[1, inf)", records_per_block="[1, inf)", chunk_mb="[1, inf)")

