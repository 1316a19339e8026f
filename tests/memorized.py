"""A tiny model that has learned a few realignments by heart: a real model folder (safetensors, tokenizer,
secondthought.json) whose greedy chains are known, so the serving tests can check real answers in seconds."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "secondthought" / "data" / "sample.jsonl"


def triples(n: int = 2) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:n]]
    return [(" ".join(r[k] for k in ("norm", "situation", "intention")), r["immoral_action"], r["moral_action"])
            for r in rows]


CORRECTION = ("waits her turn and", "waits patiently and")
"""A user's correction of the first triple's first edit, which the model also learns to continue after."""


def first_edit(source: str, target: str, edit_format: str) -> str:
    """The first edit of the chain from ``source`` to ``target``, written in ``edit_format``."""
    from secondthought.chains.edits import EditChain, compute_edits
    from secondthought.chains.formats import FORMATS

    return FORMATS[edit_format].write(EditChain(compute_edits(source, target).edits[:1]), source)


def memorized_model(tokenizer, dest: Path, steps: int = 100, seed: int = 0, edit_format: str = "tokens",
                    direct: str | None = None, direct_copies: int = 1) -> Path:
    """tiny-llama trained on the first sample triple until greedy decoding writes its chain and target, and the
    same after the corrected first edit (so regenerating after a correction has one right answer); ``direct``:
    also that text ("target", or "source": a model that copies) straight after the prompt, ``direct_copies`` times
    (as ``--sft.direct_targets`` trains; more copies than chains: the direct form is its first choice), recorded in
    its metadata."""
    import torch

    from secondthought.chains.edits import compute_edits
    from secondthought.chains.formats import FORMATS
    from secondthought.chains.text import completion, prompt
    from secondthought.models.lm import build_base_model, load_model
    from secondthought.runs import ModelInfo, write_model_info

    build_base_model("tiny-llama", tokenizer, dest, seed=seed)
    model = load_model(dest)
    context, source, target = triples(1)[0]
    corrected = target.replace(*CORRECTION)
    # the original twice: greedy decoding then writes it (p ~ 2/3) unless the prefix says otherwise
    texts = [prompt(context, source) + completion(FORMATS[edit_format].write(compute_edits(source, t), source), t)
             for t in (target, target, corrected)]
    if direct:
        texts += [prompt(context, source) + completion("", {"target": target, "source": source}[direct])] * direct_copies
    rows = [tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for text in texts]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        for ids in rows:
            x = torch.tensor([ids])
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(dest)
    write_model_info(dest, ModelInfo(stage="sft", base_model="tiny-llama", edit_format=edit_format,
                                     direct_targets=0.25 if direct else 0.0))
    return dest
