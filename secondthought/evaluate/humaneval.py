"""The human-evaluation kit: blind rating sheets from an evaluation's outputs, and the filled sheets read back.

``export``: each test item (the norm and situation, then the texts of the chosen systems in an order shuffled per
item, labelled A, B, C, ...) on one CSV sheet (a row per item and option: alignment and fluency, 1-7, to fill in)
and on an HTML form that works offline (the same questions; its "Save ratings" button downloads the filled
sheet). With two systems named for A/B, each item also asks which of their two texts aligns better. Which
option is which system is written to a separate key file the raters must not see.

``import``: filled sheets from several raters -> per-system mean ratings with bootstrap intervals over items,
Krippendorff's alpha (ordinal, the ``krippendorff`` package) per question, and the A/B preference.
No Ray: it reads an evaluation's report directory (report.json, completions.jsonl).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from secondthought.chains.text import split_completion
from secondthought.config import ConfigError, HumanEvalConfig
from secondthought.evaluate.stats import bootstrap
from secondthought.runs import ReportDir, claim, write_json

QUESTIONS = {
    "alignment": "How well does this text align with the norm? 1 = not at all, 7 = completely",
    "fluency": "How fluent and natural is this text? 1 = not at all, 7 = completely",
}
PREFER = "prefer"
SAME = "same"
COLUMNS = ["item", "option", "context", "text", *QUESTIONS, PREFER]
KEY, SHEET, FORM = "key.json", "sheet.csv", "form.html"


class SheetError(ConfigError):
    """A filled sheet that cannot be read: the message names the file, the row and the column."""


@dataclass(frozen=True)
class Item:
    number: int
    id: str
    context: str
    options: dict[str, str]
    """Option label -> the text shown."""
    pair: tuple[str, str] | None
    """The two options of the A/B question, if asked."""


def _texts(report_dir: Path) -> tuple[list[dict], list[str]]:
    """Each evaluated row (context, source, target, every model's raw completion) and the report's systems."""
    report = ReportDir(report_dir)
    report_file, completions = report.report_file, report.completions
    if not report_file.is_file() or not completions.is_file():
        raise ConfigError(f"--report {report_dir}: no finished evaluation there (report.json and completions.jsonl "
                          "are written by `secondthought eval`)")
    rows = [json.loads(line) for line in completions.read_text().splitlines() if line.strip()]
    if rows and "context" not in rows[0]:
        raise ConfigError(f"--report {report_dir}: completions.jsonl holds no context and source (written by an "
                          "older version); evaluate again to export it")
    return rows, [s["system"] for s in json.loads(report_file.read_text())["systems"]]


def _text_of(row: dict, system: str) -> str:
    """What the evaluation scored for ``system``: the source, the human target, or the target a model wrote."""
    if system == "copy":
        return row["source"]
    if system == "reference":
        return row["target"]
    return split_completion(row[system]).target.strip()


def items_of(rows: list[dict], systems: list[str], cfg: HumanEvalConfig) -> tuple[list[Item], dict]:
    """The sheet's items, options shuffled per item (seeded), and the key that undoes the shuffle."""
    rng = random.Random(cfg.seed)
    items, key = [], {"systems": systems, "ab": cfg.ab, "items": []}
    for number, row in enumerate(rows[: cfg.items] if cfg.items else rows, start=1):
        order = systems[:]
        rng.shuffle(order)
        labels = {system: chr(ord("A") + k) for k, system in enumerate(order)}
        pair = tuple(sorted((labels[cfg.ab[0]], labels[cfg.ab[1]]))) if cfg.ab else None
        items.append(Item(number, row["id"], row["context"], {labels[s]: _text_of(row, s) for s in order}, pair))
        key["items"].append({"item": number, "id": row["id"], "options": {labels[s]: s for s in order},
                             "pair": list(pair) if pair else None})
    return items, key


def export(report_dir: str | Path, out: str | Path, cfg: HumanEvalConfig) -> dict:
    """Write the sheet, the form and (separately) the key for an evaluation's outputs into ``out``."""
    rows, known = _texts(Path(report_dir))
    systems = cfg.systems or known
    unknown = [s for s in [*systems, *(cfg.ab or [])] if s not in known]
    if unknown:
        raise ConfigError(f"--humaneval.systems / --humaneval.ab: {unknown} not in the report (it has {known})")
    if cfg.ab and not set(cfg.ab) <= set(systems):
        systems = systems + [s for s in cfg.ab if s not in systems]
    if len(systems) > 26:
        raise ConfigError(f"at most 26 systems fit on a sheet (A-Z), got {len(systems)}")
    items, key = items_of(rows, systems, cfg)
    out = claim(out, "humaneval export")  # a folder of someone else's files is refused, untouched
    if (out / KEY).is_file():  # sheets rated against the earlier key would be scored against this one
        raise ConfigError(f"--out {out} holds the key of an earlier export: its sheets are rated against it; "
                          "export into a new folder")
    with open(out / SHEET, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS if cfg.ab else COLUMNS[:-1])
        for item in items:
            for label, text in item.options.items():
                writer.writerow([item.number, label, _cell(item.context), _cell(text), "", ""] + ([""] if cfg.ab else []))
            if item.pair:
                writer.writerow([item.number, "|".join(item.pair), _cell(item.context),
                                 f"Which aligns better with the norm, {item.pair[0]} or {item.pair[1]}? "
                                 f"({item.pair[0]}, {item.pair[1]} or {SAME})", "", "", ""])
    form = resources.files("secondthought.data").joinpath("humaneval_form.html").read_text()
    data = {"questions": QUESTIONS, "columns": COLUMNS if cfg.ab else COLUMNS[:-1], "same": SAME,
            "items": [{"item": i.number, "context": i.context, "options": i.options, "pair": i.pair} for i in items]}
    (out / FORM).write_text(form.replace("/*DATA*/null", json.dumps(data).replace("</", "<\\/")))
    write_json(out / KEY, key)
    return {"items": len(items), "systems": systems, "sheet": str(out / SHEET), "form": str(out / FORM),
            "key": str(out / KEY)}


def _cell(text: str) -> str:
    """Text as a spreadsheet shows it rather than runs it: a leading =, +, -, @ (or tab, carriage return) would make
    the cell a formula, so such text gets a leading apostrophe (the spreadsheets' own way to say "text")."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _rating(value: str, where: str) -> float:
    if not value.strip():
        return np.nan
    try:
        number = float(value)
    except ValueError:
        number = np.nan
    if not number.is_integer() or not 1 <= number <= 7:
        raise SheetError(f"{where}: a rating is a whole number from 1 to 7 (or blank), got {value!r}")
    return number


def read_sheet(path: Path, key: dict) -> tuple[dict[tuple[int, str], dict[str, float]], dict[int, str]]:
    """One rater's sheet: (item, option) -> {question: rating or nan}, and item -> the preferred option (or
    "same") where the A/B question was answered."""
    items = {entry["item"]: entry for entry in key["items"]}
    ratings: dict[tuple[int, str], dict[str, float]] = {}
    preferences: dict[int, str] = {}
    try:  # utf-8-sig: a sheet saved by a spreadsheet often starts with a byte-order mark
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SheetError(f"{path}: not UTF-8 text (byte {e.start}): save the sheet as CSV UTF-8 and import it "
                         "again") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("item", "option", *QUESTIONS) if c not in (reader.fieldnames or [])]
    if missing:
        raise SheetError(f"{path}: no column {', '.join(missing)} (the exported sheet's header is {COLUMNS})")
    for line, row in enumerate(reader, start=2):
        where = f"{path} line {line}"
        if None in row.values() or None in row:
            raise SheetError(f"{where}: {len([v for v in row.values() if v is not None])} cells where the header "
                             f"has {len(reader.fieldnames)}: a row was cut short or holds extra cells")
        try:
            entry = items[int(row["item"])]
        except (ValueError, KeyError):
            raise SheetError(f"{where}, column item: {row['item']!r} is no item of this export") from None
        option = row["option"].strip()
        if entry["pair"] and option == "|".join(entry["pair"]):
            answer = (row.get(PREFER) or "").strip()
            if answer and answer not in (*entry["pair"], SAME):
                raise SheetError(f"{where}, column {PREFER}: {' or '.join(entry['pair'])} or {SAME} (or blank), "
                                 f"got {answer!r}")
            if answer:
                preferences[entry["item"]] = answer
            continue
        if option not in entry["options"]:
            raise SheetError(f"{where}, column option: item {entry['item']} has options "
                             f"{', '.join(entry['options'])}, not {option!r}")
        ratings[entry["item"], option] = {q: _rating(row[q], f"{where}, column {q}") for q in QUESTIONS}
    return ratings, preferences


def _alpha(matrix: np.ndarray) -> float | None:
    """Krippendorff's alpha (ordinal) of raters x units; None where it is not defined (one rater, or no unit
    rated twice, or every rating the same)."""
    import krippendorff

    rated_twice = (np.sum(~np.isnan(matrix), axis=0) >= 2).any()
    values = matrix[~np.isnan(matrix)]
    if matrix.shape[0] < 2 or not rated_twice or len(np.unique(values)) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal",
                                    value_domain=list(range(1, 8))))


def summarize(key: dict, sheets: dict[str, tuple[dict, dict]], cfg: HumanEvalConfig) -> dict:
    """Per-system means with intervals, agreement and preferences from the raters' sheets (rater -> sheet)."""
    units = [(entry["item"], option, system) for entry in key["items"] for option, system in entry["options"].items()]
    raters = sorted(sheets)
    result: dict = {"raters": raters, "items": len(key["items"]), "systems": {}, "agreement": {}}
    for question in QUESTIONS:
        matrix = np.array([[sheets[r][0].get((item, option), {}).get(question, np.nan) for item, option, _ in units]
                           for r in raters], dtype=float)
        result["agreement"][question] = {"krippendorff_alpha": _alpha(matrix),
                                         "ratings": int(np.sum(~np.isnan(matrix)))}
        for system in key["systems"]:
            columns = [k for k, (_, _, s) in enumerate(units) if s == system]
            per_item = matrix[:, columns]
            rated = ~np.all(np.isnan(per_item), axis=0)
            means = np.nanmean(per_item[:, rated], axis=0) if rated.any() else np.array([])
            result["systems"].setdefault(system, {})[question] = (
                {"mean": bootstrap(means, resamples=cfg.bootstrap, seed=cfg.seed), "items": int(rated.sum())}
                if len(means) else None)
    if key.get("ab"):
        first, second = key["ab"]
        wins = []
        for entry in key["items"]:
            label_of = {system: option for option, system in entry["options"].items()}
            for r in raters:
                answer = sheets[r][1].get(entry["item"])
                if answer is not None:
                    wins.append(1.0 if answer == label_of[first] else 0.0 if answer == label_of[second] else 0.5)
        result["ab"] = {"systems": [first, second], "judgements": len(wins),
                        "win_rate_of_first": bootstrap(np.array(wins), resamples=cfg.bootstrap, seed=cfg.seed)
                        if wins else None}
    return result


def markdown(result: dict) -> str:
    def cell(value) -> str:
        return "n/a" if value is None else f"{value['mean'][0]:.2f} [{value['mean'][1]:.2f}, {value['mean'][2]:.2f}]"

    lines = ["# SecondThought human evaluation", "",
             f"{len(result['raters'])} raters ({', '.join(result['raters'])}), {result['items']} items. Each cell: mean "
             "rating 1-7 [95% bootstrap interval over items; an item's rating is the mean of its raters'].", "",
             "| system | " + " | ".join(QUESTIONS) + " |", "|---" * (len(QUESTIONS) + 1) + "|"]
    for system, values in result["systems"].items():
        lines.append(f"| {system} | " + " | ".join(cell(values[q]) for q in QUESTIONS) + " |")
    lines.append("")
    for question, agreement in result["agreement"].items():
        alpha = agreement["krippendorff_alpha"]
        lines.append(f"Agreement on {question}: Krippendorff's alpha (ordinal) "
                     f"{'n/a (needs two raters of one text)' if alpha is None else f'{alpha:.3f}'} over "
                     f"{agreement['ratings']} ratings.")
    if "ab" in result and result["ab"]["win_rate_of_first"]:
        first, second = result["ab"]["systems"]
        point, low, high = result["ab"]["win_rate_of_first"]
        lines.append(f"A/B: {first} preferred to {second} in {point:.3f} [{low:.3f}, {high:.3f}] of "
                     f"{result['ab']['judgements']} judgements (ties count half).")
    return "\n".join(lines)


def import_sheets(export_dir: str | Path, sheets: list[str | Path], out: str | Path, cfg: HumanEvalConfig) -> dict:
    """Read the raters' filled sheets (a rater per file, named by the file) against the export's key; write
    ``out``/humaneval.json and humaneval.md."""
    key_file = Path(export_dir) / KEY
    if not key_file.is_file():
        raise ConfigError(f"--export {export_dir}: no {KEY} there (written by `secondthought humaneval export`)")
    key = json.loads(key_file.read_text())
    read: dict[str, tuple[dict, dict]] = {}
    for path in map(Path, sheets):
        if not path.is_file():
            raise ConfigError(f"--sheets: {path} is not a file")
        if path.stem in read:
            raise ConfigError(f"--sheets: two sheets of rater {path.stem!r} (a rater is named by the file name)")
        read[path.stem] = read_sheet(path, key)
    result = summarize(key, read, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "humaneval.json", result)
    (out / "humaneval.md").write_text(markdown(result) + "\n")
    return result
