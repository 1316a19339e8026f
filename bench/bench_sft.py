"""Training tokens/s of `secondthought sft` (Ray Train + DeepSpeed) against Hugging Face `Trainer`.

    python -m bench.bench_sft                         # CPU: small-llama on prepared Moral Stories chains
    python -m bench.bench_sft --gpu --model smollm2-1.7b-shape --seq 512 --batch 8 --steps 30

Both train the same random-initialised model on the same rows with the same micro-batch size, in one
run. Tokens/s counts real (non-padding) tokens per second over the steps after the first few (warm-up,
compilation and start-up excluded for both). On a GPU the rows are synthetic fixed-length sequences, as
in the reference figures of shared/GPU.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from secondthought.config import DataConfig, PrepareConfig, RayConfig, SFTConfig

WARMUP_STEPS = 5
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def prepared_moral_stories(work: Path) -> Path:
    from secondthought.prepare.stage import run_prepare

    out = work / "prepared"
    run_prepare(DataConfig(dataset="moral-stories", input=[str(SHARED / "moral_stories" / "train.jsonl")]),
                PrepareConfig(), RayConfig(), out, progress=False)
    return out


def prepared_synthetic(work: Path, rows: int, seq: int) -> Path:
    """A prepared folder of fixed-length random sequences (no padding), for GPU throughput."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from secondthought.models.lm import load_tokenizer
    from secondthought.runs import PreparedDir, write_json

    out = PreparedDir(work / "prepared-synthetic")
    tokenizer = load_tokenizer("smollm2")
    tokenizer.save_pretrained(out.tokenizer)
    rng = np.random.default_rng(0)
    for split, n in (("train", rows), ("eval", 64)):
        ids = rng.integers(0, 49152, size=(n, seq), dtype=np.int32)
        table = pa.table({"input_ids": [list(r) for r in ids], "prompt_len": [0] * n, "direction": ["forward"] * n,
                          "costs": [[1.0, 1.0, 1.0]] * n})
        out.split(split).mkdir(parents=True)
        pq.write_table(table, out.split(split) / "part-0.parquet")
    write_json(out.manifest_file, {"synthetic": True, "rows": rows, "seq": seq, "cost_sets": [[1, 1, 1]]})
    return out.path


def train_rows(prepared: Path) -> list[dict]:
    import pyarrow.dataset as pads

    from secondthought.runs import PreparedDir

    table = pads.dataset(PreparedDir(prepared).split("train"), format="parquet").to_table(
        columns=["input_ids", "prompt_len", "direction"])
    return [{"input_ids": r["input_ids"], "prompt_len": r["prompt_len"]} for r in table.to_pylist()
            if r["direction"] == "forward"]


def ours(prepared: Path, base: Path, work: Path, args) -> dict:
    from secondthought.runs import TrainingDir
    from secondthought.sft.driver import run_sft

    out = work / "ours"
    cfg = SFTConfig(model=str(base), num_workers=args.workers, use_gpu=args.gpu, micro_batch_size=args.batch,
                    max_steps=args.steps, epochs=100, eval_every=10**6, max_eval_rows=args.workers * args.batch,
                    zero_stage=args.zero, log_every=10, lr=1e-4)
    run_sft(prepared, cfg, RayConfig(), out)
    rows = [json.loads(line) for line in TrainingDir(out).metrics.read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if r["step"] > WARMUP_STEPS and "eval_loss" not in r]
    result = {"tokens_per_s": statistics.median(speeds), "padding": statistics.mean(r["padding"] for r in rows)}
    if "mfu" in rows[-1]:
        result["mfu"] = statistics.median(r["mfu"] for r in rows if r["step"] > WARMUP_STEPS and "mfu" in r)
    return result


def hf_trainer(prepared: Path, base: Path, args) -> dict:
    import torch
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from secondthought.models.lm import load_model
    from secondthought.training.batching import Row, collate

    tokenizer = AutoTokenizer.from_pretrained(prepared / "tokenizer")
    model = load_model(base)
    rows = train_rows(prepared)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    def collator(items):
        batch = collate([Row(np.asarray(r["input_ids"]), r["prompt_len"]) for r in items], tokenizer.pad_token_id, True)
        return {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "attention_mask", "labels")}

    class Clock(TrainerCallback):
        tokens, started, seconds = 0, None, []

        def on_step_begin(self, a, state, control, **kw):
            self.step_started = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step > WARMUP_STEPS:
                self.seconds.append(time.perf_counter() - self.step_started)

    counted = []
    original = collator

    def counting(items):
        batch = original(items)
        counted.append(int(batch["attention_mask"].sum()))
        return batch

    clock = Clock()
    training = TrainingArguments(
        output_dir=str(base.parent / "hf"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=1e-4, logging_steps=10**6, save_strategy="no", report_to=[], bf16=args.gpu,
        optim="adamw_torch_fused" if args.gpu else "adamw_torch", dataloader_num_workers=0,
        use_cpu=not args.gpu, disable_tqdm=True, remove_unused_columns=False, seed=0,
    )
    Trainer(model=model, args=training, train_dataset=Rows(), data_collator=counting, callbacks=[clock]).train()
    tokens = counted[WARMUP_STEPS + 1 : WARMUP_STEPS + 1 + len(clock.seconds)]
    return {"tokens_per_s": sum(tokens) / sum(clock.seconds[: len(tokens)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small-llama")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="our workers (default: 2 on CPU, 1 on GPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq", type=int, default=512, help="GPU: synthetic sequence length")
    parser.add_argument("--zero", type=int, default=2)
    args = parser.parse_args()
    args.workers = args.workers or (1 if args.gpu else 2)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work = Path(tempfile.mkdtemp(prefix="secondthought-bench-sft-"))
    try:
        if args.gpu:
            prepared = prepared_synthetic(work, rows=args.batch * args.workers * (args.steps + 5), seq=args.seq)
        else:
            prepared = prepared_moral_stories(work)
        from transformers import AutoTokenizer

        from bench.shapes import model_folder

        base = model_folder(args.model, AutoTokenizer.from_pretrained(prepared / "tokenizer"), work / "base")
        theirs = hf_trainer(prepared, base, args)
        mine = ours(prepared, base, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    device = "GPU" if args.gpu else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    print(json.dumps({"device": device, "model": args.model, "micro_batch": args.batch, "ours": mine,
                      "hf_trainer": theirs}, indent=2))
    print(f"{'':<28}{'tokens/s':>12}")
    print(f"{'secondthought sft':<28}{mine['tokens_per_s']:>12,.0f}")
    print(f"{'Hugging Face Trainer':<28}{theirs['tokens_per_s']:>12,.0f}")
    print(f"ratio: {mine['tokens_per_s'] / theirs['tokens_per_s']:.2f}x (target: >= 1.0 on CPU, >= 1.3 on GPU at 1.7B)")


if __name__ == "__main__":
    main()
