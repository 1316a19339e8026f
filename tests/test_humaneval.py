"""The human-evaluation kit: blind shuffled sheets from an evaluation's outputs, the filled sheets read back with
per-system means and Krippendorff's alpha, checked with synthetic raters whose agreement is known, and the
offline form filled in headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from secondthought.config import ConfigError, HumanEvalConfig
from secondthought.evaluate.humaneval import KEY, SHEET, SheetError, export, import_sheets

SYSTEMS = ["copy", "reference", "sft-edits"]
TRUE_MEAN = {"copy": 2.0, "reference": 6.0, "sft-edits": 4.0}
ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def evaluation(folder: Path, items: int) -> Path:
    """An evaluation's report directory as `secondthought eval` writes it (report.json, completions.jsonl)."""
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"systems": [{"system": s} for s in SYSTEMS]}))
    rows = [{"id": f"r{k}", "context": f"Be kind, rule {k}.", "source": f"Tom hits dog {k}.",
             "target": f"Tom pets dog {k}.", "sft-edits": f"<|rep|> 1 hits <|with|> feeds<|tgt|>Tom feeds dog {k}."}
            for k in range(items)]
    (folder / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fill(sheet: Path, key: dict, out: Path, rate, prefer=None) -> Path:
    """A rater's filled copy of ``sheet``: ``rate(item, system, question)`` gives each rating."""
    systems = {(e["item"], o): s for e in key["items"] for o, s in e["options"].items()}
    rows = read(sheet)
    for row in rows:
        item = int(row["item"])
        if (item, row["option"]) in systems:
            for question in ("alignment", "fluency"):
                row[question] = rate(item, systems[item, row["option"]], question)
        elif prefer is not None:
            row["prefer"] = prefer(item, row["option"].split("|"), {o: s for (i, o), s in systems.items() if i == item})
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_export_writes_blind_sheets_shuffled_per_item_and_a_separate_key(tmp_path):
    done = export(evaluation(tmp_path / "eval", 12), tmp_path / "sheets", HumanEvalConfig(seed=3))
    assert done["items"] == 12 and done["systems"] == SYSTEMS
    rows = read(tmp_path / "sheets" / SHEET)
    assert len(rows) == 12 * 3 and list(rows[0]) == ["item", "option", "context", "text", "alignment", "fluency"]
    shown = (tmp_path / "sheets" / SHEET).read_text() + (tmp_path / "sheets" / "form.html").read_text()
    assert not any(name in shown for name in ("sft-edits", "reference", "<|tgt|>", "<|rep|>"))
    key = json.loads((tmp_path / "sheets" / KEY).read_text())
    orders = {tuple(e["options"].values()) for e in key["items"]}
    assert len(orders) > 1  # shuffled per item
    for row in rows:  # the key undoes the shuffle: each option's text is its system's
        entry = key["items"][int(row["item"]) - 1]
        k = entry["id"][1:]
        system = entry["options"][row["option"]]
        assert row["text"] == {"copy": f"Tom hits dog {k}.", "reference": f"Tom pets dog {k}.",
                               "sft-edits": f"Tom feeds dog {k}."}[system]
    with pytest.raises(ConfigError, match=r"\['rl'\] not in the report"):
        export(tmp_path / "eval", tmp_path / "x", HumanEvalConfig(systems=["copy", "rl"]))
    with pytest.raises(ConfigError, match="no finished evaluation"):
        export(tmp_path, tmp_path / "x", HumanEvalConfig())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("humaneval")
    export(evaluation(root / "eval", 80), root / "sheets", HumanEvalConfig(ab=["sft-edits", "copy"]))
    return root / "sheets", json.loads((root / "sheets" / KEY).read_text())


def raters(exported, tmp_path, noise: float | None, n: int = 3, seed: int = 0) -> list[Path]:
    """``n`` raters around each text's true quality (system mean + an item effect): ``noise`` the spread of each
    rater's own error, None for raters who answer at random."""
    folder, key = exported
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    quality = {(e["item"], s): TRUE_MEAN[s] + rng.choice([-1.0, 0.0, 1.0]) for e in key["items"] for s in SYSTEMS}
    sheets = []
    for r in range(n):
        def rate(item, system, question):
            value = rng.integers(1, 8) if noise is None else quality[item, system] + rng.normal(0, noise)
            return str(int(np.clip(np.rint(value), 1, 7)))

        def prefer(item, pair, systems):
            better = max(pair, key=lambda o: quality[item, systems[o]])
            return better if rng.random() < 0.9 else min(pair, key=lambda o: quality[item, systems[o]])

        sheets.append(fill(folder / SHEET, key, tmp_path / f"rater{r}.csv", rate, prefer))
    return sheets


def test_raters_who_agree_perfectly_give_alpha_1_and_the_true_means(exported, tmp_path):
    result = import_sheets(exported[0], raters(exported, tmp_path, noise=0.0), tmp_path / "out", HumanEvalConfig())
    assert result["raters"] == ["rater0", "rater1", "rater2"] and result["items"] == 80
    for question in ("alignment", "fluency"):
        assert result["agreement"][question]["krippendorff_alpha"] == pytest.approx(1.0)
        assert result["agreement"][question]["ratings"] == 3 * 80 * 3
        for system, mean in TRUE_MEAN.items():
            point, low, high = result["systems"][system][question]["mean"]
            assert low <= mean <= high and abs(point - mean) < 0.3
    point, low, high = result["ab"]["win_rate_of_first"]  # sft-edits (4) against copy (2): better on every item
    assert result["ab"]["systems"] == ["sft-edits", "copy"] and low <= 0.9 <= high
    text = (tmp_path / "out" / "humaneval.md").read_text()
    assert "| reference |" in text and "Krippendorff's alpha (ordinal) 1.000" in text


def test_alpha_falls_as_raters_disagree_and_is_near_zero_for_random_raters(exported, tmp_path):
    alphas = []
    for k, noise in enumerate([0.5, 1.5, 3.0, None]):
        result = import_sheets(exported[0], raters(exported, tmp_path / str(k), noise, seed=k), tmp_path / f"o{k}",
                               HumanEvalConfig())
        alphas.append(result["agreement"]["alignment"]["krippendorff_alpha"])
    assert 1.0 > alphas[0] > alphas[1] > alphas[2] and alphas[0] > 0.8
    assert abs(alphas[3]) < 0.1  # chance agreement
    # noisy raters still rank the systems by their true quality
    means = {s: result["systems"][s]["alignment"]["mean"][0] for s in SYSTEMS}
    assert abs(means["copy"] - means["reference"]) < 1.0  # ... but random ones do not separate them


def test_a_bad_sheet_is_refused_naming_the_file_line_and_column(exported, tmp_path):
    folder, key = exported
    bad = fill(folder / SHEET, key, tmp_path / "bad.csv", lambda item, system, q: "9" if item == 2 else "4")
    with pytest.raises(SheetError, match=r"bad.csv line \d+, column alignment: .*1 to 7.*'9'"):
        import_sheets(folder, [bad], tmp_path / "out", HumanEvalConfig())
    rows = read(folder / SHEET)
    rows[0]["option"] = "Q"
    with open(tmp_path / "option.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SheetError, match=r"option.csv line 2, column option: item 1 has options .* not 'Q'"):
        import_sheets(folder, [tmp_path / "option.csv"], tmp_path / "out", HumanEvalConfig())
    with pytest.raises(ConfigError, match="no key.json"):
        import_sheets(tmp_path, [bad], tmp_path / "out", HumanEvalConfig())


def test_the_command_line_exports_and_imports(tmp_path):
    from secondthought.cli import run

    evaluation(tmp_path / "eval", 5)
    assert run(["humaneval", "export", "--report", str(tmp_path / "eval"), "--out", str(tmp_path / "s"),
                "--humaneval.systems", '["reference", "sft-edits"]']) == 0
    key = json.loads((tmp_path / "s" / KEY).read_text())
    sheet = fill(tmp_path / "s" / SHEET, key, tmp_path / "ann.csv", lambda i, s, q: "7" if s == "reference" else "3")
    assert run(["humaneval", "import", "--export", str(tmp_path / "s"), "--sheets", str(sheet),
                "--out", str(tmp_path / "r")]) == 0
    result = json.loads((tmp_path / "r" / "humaneval.json").read_text())
    assert result["systems"]["reference"]["alignment"]["mean"][0] == 7.0
    assert result["systems"]["sft-edits"]["fluency"]["mean"][0] == 3.0
    assert result["agreement"]["alignment"]["krippendorff_alpha"] is None  # one rater: agreement undefined
    assert run(["humaneval", "import", "--export", str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 2


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_offline_form_filled_in_a_browser_saves_a_sheet_that_imports(tmp_path):
    from playwright.sync_api import sync_playwright

    export(evaluation(tmp_path / "eval", 3), tmp_path / "s", HumanEvalConfig(ab=["sft-edits", "copy"]))
    key = json.loads((tmp_path / "s" / KEY).read_text())
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto((tmp_path / "s" / "form.html").as_uri())
            for entry in key["items"]:
                for option, system in entry["options"].items():
                    value = {"copy": 2, "reference": 6, "sft-edits": 5}[system]
                    page.check(f'input[name="r-{entry["item"]}-{option}-alignment"][value="{value}"]')
                    if entry["item"] != 3:  # one item's fluency left blank
                        page.check(f'input[name="r-{entry["item"]}-{option}-fluency"][value="{value - 1}"]')
                edits = next(o for o, s in entry["options"].items() if s == "sft-edits")
                page.check(f'input[name="p-{entry["item"]}"][value="{edits}"]')
            assert page.text_content("#status") == "18 of 21 answers given"
            page.click("#save")
            assert "Type your name" in page.text_content("#status")
            page.fill("#rater", "Ann Lee")
            with page.expect_download() as download:
                page.click("#save")
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "humaneval-form.png"), full_page=True)
        finally:
            browser.close()
    assert saved.name == "Ann_Lee.csv"
    result = import_sheets(tmp_path / "s", [saved], tmp_path / "r", HumanEvalConfig())
    assert {s: result["systems"][s]["alignment"]["mean"][0] for s in SYSTEMS} == {"copy": 2, "reference": 6,
                                                                                  "sft-edits": 5}
    assert result["systems"]["reference"]["fluency"] == {"mean": (5.0, 5.0, 5.0), "items": 2}
    assert result["ab"]["win_rate_of_first"][0] == 1.0 and result["ab"]["judgements"] == 3


def test_an_export_never_replaces_a_key_nor_writes_into_a_folder_not_its_own(tmp_path):
    report = evaluation(tmp_path / "eval", 3)
    export(report, tmp_path / "sheets", HumanEvalConfig(seed=1))
    first = (tmp_path / "sheets" / KEY).read_text()
    with pytest.raises(ConfigError, match="holds the key of an earlier export"):
        export(report, tmp_path / "sheets", HumanEvalConfig(seed=2))
    assert (tmp_path / "sheets" / KEY).read_text() == first
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="was not written by secondthought"):
        export(report, mine, HumanEvalConfig())
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_model_text_that_a_spreadsheet_would_run_is_written_as_text(tmp_path):
    report = evaluation(tmp_path / "eval", 2)
    rows = [json.loads(line) for line in (report / "completions.jsonl").read_text().splitlines()]
    rows[0]["sft-edits"] = '<|tgt|>=HYPERLINK("http://x", "click")'
    rows[1]["context"] = "@SUM(A1:A9)"
    (report / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    export(report, tmp_path / "sheets", HumanEvalConfig())
    cells = [cell for row in read(tmp_path / "sheets" / SHEET) for cell in (row["context"], row["text"])]
    assert "'=HYPERLINK(\"http://x\", \"click\")" in cells and "'@SUM(A1:A9)" in cells
    assert not any(cell[:1] in "=+-@" for cell in cells if cell)


def test_a_sheet_cut_short_in_another_encoding_or_with_a_byte_order_mark(exported, tmp_path):
    folder, key = exported[0], json.loads((exported[0] / KEY).read_text())
    good = fill(folder / SHEET, key, tmp_path / "good.csv", lambda item, system, question: "4")
    lines = good.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join([lines[0], lines[1].rsplit(",", 2)[0]] + lines[2:]) + "\n")
    with pytest.raises(SheetError, match=r"short.csv line 2: 5 cells where the header has 7: a row was cut short"):
        import_sheets(folder, [short], tmp_path / "o1", HumanEvalConfig())
    latin = tmp_path / "latin.csv"
    latin.write_bytes(good.read_text().replace("Be kind", "Be kind \u00e9").encode("cp1252"))
    with pytest.raises(SheetError, match=r"latin.csv: not UTF-8 text .*save the sheet as CSV UTF-8"):
        import_sheets(folder, [latin], tmp_path / "o2", HumanEvalConfig())
    marked = tmp_path / "bom.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    assert import_sheets(folder, [marked], tmp_path / "o3", HumanEvalConfig())["raters"] == ["bom"]
