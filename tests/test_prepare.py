import json

import pyarrow.dataset as pads
import pytest

from secondthought.chains.edits import augment
from secondthought.chains.formats import FORMATS
from secondthought.chains.text import SEP, TGT, completion, prompt
from secondthought.config import ConfigError, DataConfig, PrepareConfig, RayConfig
from secondthought.prepare.encoding import Encoder
from secondthought.prepare.stage import run_prepare
from tests.conftest import SAMPLE, shared_file
from tests.test_data import STORY


def read_split(out, split):
    return pads.dataset(out / "data" / split, format="parquet").to_table().to_pylist()


@pytest.mark.parametrize("edit_format", list(FORMATS))
def test_prepare_reconciles_every_row_and_writes_checkable_examples(ray_local, tmp_path, tokenizer, edit_format):
    path = tmp_path / "stories.jsonl"
    good = [{**STORY, "ID": f"g{i}", "moral_action": f"Ann walks around dog number {i}."} for i in range(40)]
    bad = [b'{"broken', json.dumps({**STORY, "ID": "nomoral", "moral_action": None}).encode(), b"\xff\xfe"]
    path.write_bytes(b"\n".join([json.dumps(r).encode() for r in good[:20]] + bad
                                + [json.dumps(r).encode() for r in good[20:]]) + b"\n")
    out = tmp_path / "prepared"
    manifest = run_prepare(DataConfig(dataset="moral-stories", input=[str(path)], eval_fraction=0.2, test_fraction=0.2),
                           PrepareConfig(records_per_block=8, reverse=True, edit_format=edit_format), RayConfig(), out,
                           progress=False)
    assert manifest["edit_format"] == edit_format
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (43, 40, 3)
    assert manifest["quarantine_reasons"] == {"missing field 'moral_action'": 1, "undecodable bytes (not UTF-8) at byte 0": 1,
                                              "malformed JSON: Unterminated string starting at (column 2)": 1}
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantine] == [21, 22, 23]

    rows = [row for split in ("train", "eval", "test") for row in read_split(out, split)]
    assert len(rows) == manifest["chains_out"] == sum(manifest["chains_per_split"].values())
    assert {r["id"] for r in rows} == {g["ID"] for g in good}
    assert {r["direction"] for r in rows} == {"forward", "reverse"}
    assert sum(manifest["chain_length"]["histogram"].values()) == len(rows)
    for row in rows:
        assert FORMATS[edit_format].read(row["chain"], row["source"]).apply(row["source"]) == row["target"]
        assert row["chain"].startswith(("<|", " replace", " insert", " delete")[0 if edit_format == "tokens" else 1:])
        text = tokenizer.decode(row["input_ids"])
        assert text == prompt(row["context"], row["source"]) + completion(row["chain"], row["target"]) + tokenizer.eos_token
        assert tokenizer.decode(row["input_ids"][: row["prompt_len"]]).endswith(SEP)
    splits_of_id = {}
    for split in ("train", "eval", "test"):
        for row in read_split(out, split):
            splits_of_id.setdefault(row["id"], set()).add(split)
    assert all(len(s) == 1 for s in splits_of_id.values())

    with pytest.raises(ConfigError, match="--overwrite"):
        run_prepare(DataConfig(dataset="moral-stories", input=[str(path)]), PrepareConfig(), RayConfig(), out)


def test_prepare_real_moral_stories_and_too_long_rows(ray_local, tmp_path):
    out = tmp_path / "ms"
    manifest = run_prepare(DataConfig(dataset="moral-stories", input=[str(shared_file("moral_stories", "dev.jsonl"))]),
                           PrepareConfig(max_tokens=128, edit_format="tokens"), RayConfig(), out, progress=False)
    assert manifest["rows_in"] == 1000
    assert manifest["rows_out"] + manifest["rows_quarantined"] == 1000
    assert manifest["rows_quarantined"] > 0
    assert all(r.startswith("too long:") and r.endswith("> max_tokens 128") for r in manifest["quarantine_reasons"])
    assert manifest["rows_out"] > 500
    assert manifest["chains_out"] >= manifest["rows_out"]
    lines = (out / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == manifest["rows_quarantined"]


@pytest.mark.parametrize("edit_format", list(FORMATS))
@pytest.mark.parametrize("source", ["bundled sample", "moral stories dev"])
def test_fast_encoding_equals_tokenizing_the_whole_text(tokenizer, source, edit_format):
    encoder = Encoder(tokenizer, FORMATS[edit_format])
    assert encoder.by_pieces
    path = SAMPLE if source == "bundled sample" else shared_file("moral_stories", "dev.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    rows.append({"norm": "", "immoral_action": "  odd\twhite  space ", "moral_action": "odd white\nspace"})
    rows.append({"norm": "Say it.", "immoral_action": 'He said "no" \\ twice.', "moral_action": 'He said "yes" twice.'})
    items = [(r["norm"], source, target, chain)
             for r in rows
             for source, target in [(r["immoral_action"], r["moral_action"]), (r["moral_action"], r["immoral_action"])]
             for chain in augment(source, target, [(1, 1, 1), (1, 1, 2), (1, 1, 1.5)])]
    assert encoder.encode_many(items) == [encoder.whole(*item) for item in items]
    assert TGT in tokenizer.convert_ids_to_tokens(encoder.whole(*items[0])[0])


def test_a_record_an_adapter_loses_is_caught_by_the_independent_count(tmp_path, monkeypatch):
    """The reconciliation compares what the reader gave with what came out, so it can fail."""
    import pyarrow as pa

    from secondthought import data as datasets
    from secondthought.data import moral_stories
    from secondthought.prepare.stage import _read_blocks, reconcile

    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"ID": f"s{i}", "norm": "Be kind.", "situation": "A dog.", "intention": "Pass.",
                                        "moral_action": "Ann walks around.", "immoral_action": f"Ann kicks it {i}."})
                            + "\n" for i in range(10)))
    cfg = DataConfig(dataset="moral-stories", input=[str(path)])

    def count(blocks):
        table = pa.concat_tables(list(blocks))
        kept = sum(len(r) for r in table["records"].to_pylist())
        return {"rows_read": sum(table["read"].to_pylist()), "rows_in": kept, "rows_out": kept, "rows_quarantined": 0}

    chunk = datasets.plan(cfg, 1 << 20)[0]
    whole = count(_read_blocks(chunk, cfg, records_per_block=3))
    assert whole["rows_read"] == whole["rows_in"] == 10
    reconcile(whole)

    def lossy_adapt(records, c):  # drops the last record without a word
        return (t for k, t in enumerate(moral_stories.adapt(records, c)) if k != 9)

    monkeypatch.setitem(datasets.ADAPTERS, "moral-stories", datasets.Adapter(lossy_adapt, "jsonl"))
    lossy = count(_read_blocks(chunk, cfg, records_per_block=3))
    assert lossy["rows_read"] == 10 and lossy["rows_in"] == 9
    with pytest.raises(RuntimeError, match="prepare lost records: the readers gave 10, 9"):
        reconcile(lossy)


def test_the_judge_never_sees_what_rl_trains_on(ray_local, tmp_path):
    """The judge's training triples and the RL stage's prompts and discriminator negatives are disjoint
    halves of the training split."""
    from secondthought.data.schema import judge_held_out
    from secondthought.evaluate.driver import _triples
    from secondthought.rl.prompts import load_prompts
    from secondthought.runs import PreparedDir

    run_prepare(DataConfig(dataset="sample"), PrepareConfig(cost_sets=[(1, 1, 1)]), RayConfig(), tmp_path / "p",
                progress=False)
    prepared = PreparedDir(tmp_path / "p")
    train = {r.id for r in _triples(prepared, "train")}
    judge = {r.id for r in _triples(prepared, "train") if judge_held_out(r.id)}
    prompts = load_prompts(prepared)
    assert judge and prompts.ids and not judge & set(prompts.ids) and judge | set(prompts.ids) == train
    assert prompts.reverse and set(prompts.reverse) <= set(prompts.ids)
