"""The run-directory contract: every artefact's name and every reader of it, in one place.

- prepared directory (``prepare``): manifest.json, quarantine.jsonl, tokenizer/, data/<split>/*.parquet
- training directory (``sft``, ``rl``): config.json, summary.json (written last), model/, base/ (sft),
  metrics.jsonl, checkpoints
- report directory (``eval``): report.json (written last), report.md, completions.jsonl, metrics.png, judge/
- model folder: config.json, safetensors weights, tokenizer files and secondthought.json (what the model
  writes and what it was trained from: all a reader such as the serving side needs to know)

Stages meet only here: none imports another. No Ray; pyarrow for the Parquet readers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

from secondthought import console
from secondthought.chains.formats import LEGACY, EditFormat, edit_format
from secondthought.config import ConfigError

CONFIG = "config.json"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
SUMMARY = "summary.json"
REPORT = "report.json"
METRICS = "metrics.jsonl"
MODEL_INFO = "secondthought.json"
PIPELINE = "pipeline.json"
TRANSFER = "transfer.json"
FAULT_MARKER = "fault-injected"
"""Testing fault tolerance: a run's injected fault happens once, while this file is absent."""
WORKERS = "workers.json"
MARKER = ".secondthought"
"""In every folder a command writes: only such a folder is ever emptied (--overwrite)."""


def resolve_out(out: str | Path) -> Path:
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    return path


def claim(out: str | Path, kind: str, replace: bool = False, flag: str = "--out", done_file: str | None = None) -> Path:
    """Make ``out`` an output folder of ours for ``kind`` (prepared, training, report, pipeline, transfer):
    new or empty, or one that carries our marker for the same kind (``replace``: emptied first). A folder
    with files that we did not write (no marker) or of another kind is refused, and nothing in it touched.
    ``done_file``: the kind's last artefact, which also marks a folder ours (runs from before the marker)."""
    path = resolve_out(out)
    if path.is_dir() and any(path.iterdir()):
        marker = path / MARKER
        found = json.loads(marker.read_text()).get("kind") if marker.is_file() else None
        if found is None and not (done_file and (path / done_file).is_file()):
            raise ConfigError(f"{flag} {path} is not empty and was not written by secondthought: choose a new or "
                              "empty folder (nothing in it was touched)")
        if found not in (None, kind):
            raise ConfigError(f"{flag} {path} holds a {found} folder, not a {kind} one: choose another folder")
        if replace and found is None:  # a done file alone does not make a folder ours to empty: it may be the user's
            raise ConfigError(f"{flag} {path} has a {done_file} but no {MARKER} marker, so it may not be ours: it is "
                              "not emptied; choose a new or empty folder (nothing in it was touched)")
        if replace:
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / MARKER, {"kind": kind})
    return path


def write_json(path: Path, value, indent: int | None = 2) -> None:
    """Written whole or not at all: to a temporary file beside it, synced, then renamed over it (a crash never
    leaves a truncated file that a reader would take for a finished stage)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(value, indent=indent) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _at(name: str, doc: str = "") -> property:
    """A path inside the directory, by its name in the contract."""
    return property(lambda self: self.path / name, doc=doc)


@dataclass(frozen=True)
class PreparedDir:
    """The output of ``secondthought prepare``."""

    path: Path
    manifest_file = _at(MANIFEST, "written last: the directory is done when it exists")
    quarantine = _at(QUARANTINE)
    tokenizer = _at("tokenizer", "the tokenizer (edit tokens added) that the token ids refer to")
    data = _at("data")
    judges = _at("judges", "judges trained on this data by evaluations, reused by later ones (secondthought.evaluate.judge)")

    @classmethod
    def open(cls, path: str | Path, flag: str = "--prepared") -> PreparedDir:
        """A finished prepared directory, or a ConfigError naming ``flag``."""
        found = cls(Path(path).expanduser().resolve())
        if not found.done:
            raise ConfigError(f"{flag} {found.path} holds no prepared data: run `secondthought prepare` first")
        return found

    @property
    def done(self) -> bool:
        return self.manifest_file.is_file()

    def manifest(self) -> dict:
        return read_json(self.manifest_file)

    @property
    def edit_format(self) -> str:
        """The name of the format the training text writes chains in (data from before the option: the legacy one)."""
        return self.manifest().get("edit_format", LEGACY.name)

    @property
    def format(self) -> EditFormat:
        return edit_format(self.edit_format)

    def fingerprint(self) -> str:
        """Names this preparation: a redone one (even of the same input) gets another."""
        import hashlib

        return hashlib.blake2b(self.manifest_file.read_bytes(), digest_size=8).hexdigest()

    def split(self, name: str) -> Path:
        return self.data / name

    def count_forward(self, split: str, costs: Optional[list] = None) -> int:
        """Forward chains in a split (with ``costs``: only those of that cost set, one per triple)."""
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        folder = self.split(split)
        if not folder.is_dir():
            return 0
        table = pads.dataset(folder, format="parquet").to_table(columns=["direction", "costs"])
        forward = pc.equal(table["direction"], "forward")
        if costs is None:
            return int(pc.sum(forward).as_py() or 0)
        return sum(f and list(c) == costs for f, c in zip(forward.to_pylist(), table["costs"].to_pylist()))

    def first_chains(self, split: str, columns: list[str]) -> tuple[list[dict], dict[str, dict]]:
        """A split read back one row per triple: the first forward row of each id (sorted by id) and the
        first reverse row by id. Rows hold ``columns``, ``id``, ``direction`` and ``prompt_ids`` (the
        prompt's token ids); a split that is not there gives nothing."""
        import pyarrow.dataset as pads

        folder = self.split(split)
        if not folder.is_dir():
            return [], {}
        wanted = list(dict.fromkeys(["id", "direction", "prompt_len", "input_ids", *columns]))
        first: dict[str, dict[str, dict]] = {"forward": {}, "reverse": {}}
        for row in pads.dataset(folder, format="parquet").to_table(columns=wanted).to_pylist():
            if row["id"] not in first[row["direction"]]:
                row["prompt_ids"] = list(row["input_ids"][: row["prompt_len"]])
                first[row["direction"]][row["id"]] = row
        return [first["forward"][k] for k in sorted(first["forward"])], first["reverse"]


@dataclass(frozen=True)
class TrainingDir:
    """The output of ``secondthought sft`` or ``secondthought rl``."""

    path: Path
    summary_file = _at(SUMMARY, "written last: the run is done when it exists")
    model = _at("model", "the trained model (a Hugging Face folder)")
    base = _at("base", "sft: the model before training, embeddings sized to the tokenizer (perplexity reference)")
    best = _at("best", "sft: the best model so far by eval loss, written by the workers")
    metrics = _at(METRICS)
    checkpoints = _at("checkpoints", "rl: the driver's checkpoints (sft: Ray Train's, under ray/)")
    fault_marker = _at(FAULT_MARKER)

    @classmethod
    def start(cls, out: str | Path, config: dict, resume: bool, overwrite: bool) -> TrainingDir:
        """Make ``out`` ready for a training run: an earlier run there is replaced (``overwrite``), continued
        (``resume``) or refused with the flag to pass. Writes out/config.json."""
        run = cls(resolve_out(out))
        started = run.path.is_dir() and any(run.path.iterdir())
        if started and not overwrite:
            claim(run.path, "training", done_file=SUMMARY)  # refuses a folder that is not ours
            if run.done and not resume:  # (rl --resume with more iterations extends a finished run)
                raise ConfigError(f"{run.path} already holds a finished run: pass --overwrite to run again")
            if not resume:
                raise ConfigError(f"{run.path} holds an unfinished run: pass --resume to continue it or --overwrite")
        claim(run.path, "training", replace=overwrite, done_file=SUMMARY)
        write_json(run.path / CONFIG, config)
        return run

    @property
    def done(self) -> bool:
        return self.summary_file.is_file()

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_file, summary)


@dataclass(frozen=True)
class ReportDir:
    """The output of ``secondthought eval``."""

    path: Path
    report_file = _at(REPORT, "written last: the evaluation is done when it exists")
    markdown = _at("report.md")
    completions = _at("completions.jsonl")
    plot = _at("metrics.png")


def run_once(name: str, done_file: Path, doing: str, run: Callable[[bool], object]) -> dict:
    """Run a stage unless ``done_file`` (its last artefact) says it finished; ``run(unfinished)`` continues a
    started one. Returns what ``done_file`` holds."""
    folder = done_file.parent
    if done_file.is_file():
        console.say(f"[secondthought] {name}: done before, using {folder}")
    else:
        unfinished = folder.is_dir() and any(folder.iterdir())
        console.say(f"[secondthought] {name}: {'continuing' if unfinished else doing}")
        run(unfinished)
    return read_json(done_file)


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder written by ``sft`` or ``rl`` is, stored beside its weights (secondthought.json)."""

    stage: Optional[str] = None
    """The stage that wrote it: sft or rl (None: a folder from elsewhere)."""
    writes_chains: bool = True
    """Whether the model writes a chain of edits before the target (False: the targets-only baseline)."""
    edit_format: str = LEGACY.name
    """The name of the format its chains are written in (chains.formats.FORMATS)."""
    direct_targets: float = 0.0
    """The share of its training rows that had no chain (``--sft.direct_targets``): above 0 a chain model also
    writes a target straight after the prompt, which the ``derived`` decoding asks of it."""
    base_model: Optional[str] = None
    """The pretrained LM its lineage started from (a name such as smollm2, or a folder)."""
    base_folder: Optional[str] = None
    """That LM as a folder with the edit tokens added: the reference for perplexity."""
    trained_from: Optional[str] = None
    """What this stage started from: the base LM (sft) or the policy folder (rl)."""

    @property
    def format(self) -> EditFormat:
        return edit_format(self.edit_format)

    @property
    def served_decoding(self) -> str:
        """How the server answers with this model by default: derived where it learned to write a target without
        a chain (the best answers on real rows: README, Answer quality), else constrained; free for a model that
        writes targets only."""
        if not self.writes_chains:
            return "free"
        return "derived" if self.direct_targets > 0 else "constrained"


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def model_folder(path: str | Path, flag: str) -> Path:
    """``path`` resolved, if it is a Hugging Face model folder with safetensors weights; else a ConfigError
    naming ``flag``."""
    folder = Path(path).expanduser().resolve()
    if not is_model_folder(folder):
        raise ConfigError(f"{flag} {folder} is not a model folder (no {CONFIG}): give e.g. the model/ folder of "
                          "`secondthought sft`")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{flag} {folder} holds no safetensors weights (only safetensors are loaded)")
    return folder


def read_model_info(folder: str | Path) -> ModelInfo:
    """The folder's secondthought.json; defaults for a folder without one (a model that writes chains)."""
    path = Path(folder) / MODEL_INFO
    if not path.is_file():
        return ModelInfo()
    known = {f.name for f in fields(ModelInfo)}
    return ModelInfo(**{k: v for k, v in read_json(path).items() if k in known})


def write_model_info(folder: str | Path, info: ModelInfo) -> None:
    write_json(Path(folder) / MODEL_INFO, asdict(info))


def base_of(folder: str | Path) -> Path:
    """The LM to measure a model's perplexity against: its recorded base folder, else the model itself."""
    base = read_model_info(folder).base_folder
    return Path(base) if base and is_model_folder(base) else Path(folder)
