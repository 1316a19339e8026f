"""Rollout generation tokens/s: SecondThought's sampler against Hugging Face ``model.generate``.

    python -m bench.bench_rollout --model runs/demo/sft/model            # CPU, the fine-tuned SmolLM2
    python -m bench.bench_rollout --model smollm2 --gpu --prompts 256    # GPU (see ../shared/GPU.md)
    python -m bench.bench_rollout --model runs/demo/sft/model --metrics runs/demo/rl/metrics.jsonl
    python -m bench.bench_rollout --model runs/demo/sft/model --batch 64 --prompts 128 --dtype bf16   # AMX CPU

In one run, on the same prompts (Moral Stories sample prompts in the training format) with the same
sampling settings: (1) ``generate`` one prompt at a time, (2) ``generate`` batched with left padding,
(3) ``secondthought.decoding.policy.sample`` (length-sorted micro-batches, KV cache, finished rows leave
the batch). Tokens/s counts generated tokens up to and including EOS. With ``--metrics`` it also
prints the time split of the RL iterations recorded in an ``rl`` run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def load_prompts(tokenizer, n: int) -> list[list[int]]:
    from secondthought.chains.text import prompt
    from secondthought.config import DataConfig
    from secondthought.data import plan, triples

    cfg = DataConfig()
    texts = [prompt(t.context, t.source) for chunk in plan(cfg, 1 << 24) for t in triples(chunk, cfg)
             if hasattr(t, "context")]
    return [tokenizer(texts[k % len(texts)], add_special_tokens=False).input_ids for k in range(n)]


def generated_tokens(completion: list[int], eos: int) -> int:
    return completion.index(eos) + 1 if eos in completion else len(completion)


def hf_generate(model, prompts, batch_size: int, max_new_tokens: int, eos: int, pad: int, device) -> int:
    tokens = 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, p in enumerate(chunk):
            ids[k, width - len(p) :] = torch.tensor(p)
            mask[k, width - len(p) :] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, top_k=0,
                             temperature=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        tokens += sum(generated_tokens(row[width:].tolist(), eos) for row in out)
    return tokens


def time_split(metrics: Path) -> dict:
    from secondthought.tracking import read_metrics

    rows = list(read_metrics(metrics, "iteration").values())
    parts = ("rollout_s", "score_s", "learn_s", "disc_s", "sync_s")
    total = sum(r["iteration_s"] for r in rows)
    return {"iterations": len(rows), "seconds_per_iteration": total / len(rows),
            **{p: round(sum(r[p] for r in rows) / total, 3) for p in parts}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="a model folder, 'smollm2', or a tiny model name")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--single", type=int, default=8, help="prompts for the one-at-a-time baseline")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), help="default: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--metrics", help="an rl run's metrics.jsonl: print the time split of its iterations")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from bench.shapes import SHAPES, model_folder
    from secondthought.decoding.policy import SamplingParams, sample
    from secondthought.models.lm import TINY_MODELS, load_model, load_tokenizer

    device = torch.device("cuda" if args.gpu else "cpu")
    if args.model == "smollm2" or args.model in TINY_MODELS or args.model in SHAPES:
        import tempfile

        tokenizer = load_tokenizer("smollm2")
        folder = model_folder(args.model, tokenizer, Path(tempfile.mkdtemp()) / "model")
    else:
        folder = Path(args.model)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if args.gpu else "fp32")) == "bf16" else torch.float32
    model = load_model(folder, dtype=dtype).to(device).eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = load_prompts(tokenizer, args.prompts)
    results = {}

    def timed(name: str, run, n_prompts: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        tokens = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        results[name] = {"prompts": n_prompts, "tokens": tokens, "seconds": round(seconds, 2),
                         "tokens_per_s": round(tokens / seconds, 1)}
        print(f"{name:28s} {tokens:6d} tokens {seconds:7.2f}s {tokens / seconds:9.1f} tokens/s", flush=True)

    torch.manual_seed(0)
    hf_generate(model, prompts[:2], 2, 4, eos, pad, device)  # warm-up
    with torch.no_grad():
        timed("generate, one at a time", lambda: hf_generate(model, prompts[: args.single], 1, args.max_new_tokens,
                                                             eos, pad, device), args.single)
        timed("generate, batched", lambda: hf_generate(model, prompts, args.batch, args.max_new_tokens, eos, pad,
                                                       device), len(prompts))
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, batch_size=args.batch)
        timed("secondthought sample", lambda: sum(generated_tokens(c, eos) for c in sample(model, prompts, eos, pad,
                                                                                             params, seed=0)),
              len(prompts))
    ours = results["secondthought sample"]["tokens_per_s"]
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if args.gpu else ""),
        "model": str(args.model), "dtype": str(dtype).removeprefix("torch."), "batch": args.batch, "results": results,
        "ratio_vs_one_at_a_time": round(ours / results["generate, one at a time"]["tokens_per_s"], 2),
        "ratio_vs_batched_generate": round(ours / results["generate, batched"]["tokens_per_s"], 2),
    }
    if args.metrics:
        report["rl_iteration_time_split"] = time_split(Path(args.metrics))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
