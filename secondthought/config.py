"""The one config tree: small typed sections, defaults here and nowhere else.

The CLI exposes every field as a flag (``--data.input``, ``--prepare.cost_sets``); a YAML file
given with ``--config`` sets any of them. Validation errors name the flag to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union


class ConfigError(ValueError):
    """A config value is invalid; the message names the flag."""


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
    reverse: bool = False
    """Also write target -> source chains (direction "reverse"): negatives for the RL discriminator."""
    tokenizer: str = "smollm2"
    """Tokenizer: "smollm2" (embedded default), a local folder, or a hub id on machines with network."""
    max_tokens: int = 1024
    """Rows whose longest training sequence exceeds this many tokens are quarantined."""
    records_per_block: int = 4096
    """Records per read block (and per output shard)."""
    chunk_mb: int = 16
    """Split JSONL inputs into byte ranges of about this many MiB, read in parallel."""

    def __post_init__(self) -> None:
        from secondthought.edits import check_costs

        if not self.cost_sets:
            raise ConfigError("--prepare.cost_sets needs at least one (insert, delete, replace) triple")
        try:
            self.cost_sets = [check_costs(tuple(c)) for c in self.cost_sets]
        except ValueError as e:
            raise ConfigError(f"--prepare.cost_sets: {e}") from None
        for name in ("max_tokens", "records_per_block", "chunk_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--prepare.{name} must be at least 1, got {getattr(self, name)}")


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


def resolve_out(out: str | Path) -> Path:
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    return path
