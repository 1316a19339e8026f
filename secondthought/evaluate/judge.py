"""The evaluation judge: the probability that a text is the aligned action in its context.

Trained on (context, source) -> 0 and (context, target) -> 1 from the training triples held out for it
(``judge_held_out``), never on the test split. Two kinds, compared in the README (Evaluation):

- ``frozen``: the encoder is not trained. Mean-pooled embeddings of the context and of the text, in
  one pass over the unique texts, and a logistic regression on [text, context * text] (scikit-learn):
  a convex fit of seconds.
- ``finetune``: the whole encoder fine-tuned as a pair classifier (``classifier.PairClassifier``).

A trained judge lives in a folder: ``judge.json`` (its settings and training figures) and safetensors
weights. Torch, transformers and scikit-learn only, no Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from secondthought.runs import write_json
from secondthought.tracking import ProgressLine

SETTINGS = "judge.json"
HEAD = "head.safetensors"
# Inverse L2 strength of the frozen judge's head: 0.01 beat 0.1 and 1 by 2-4 points on Moral Stories
# (700 training triples, 768 features), where weaker regularisation overfits.
HEAD_C = 0.01


@dataclass(frozen=True)
class JudgeSpec:
    """What a judge is: everything that changes its weights (and so its cache key)."""

    kind: str = "frozen"
    encoder: str = "minilm"
    max_train_rows: int | None = None
    epochs: int = 4
    lr: float = 5e-5
    batch_size: int = 16
    seed: int = 0

    def key(self, data_fingerprint: str) -> str:
        settings = asdict(self)
        if self.kind == "frozen":  # only the fine-tuned judge has an optimizer
            settings = {k: v for k, v in settings.items() if k not in ("epochs", "lr", "batch_size")}
        text = json.dumps({"data": data_fingerprint, **settings}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class Labelled:
    """(context, text) pairs with 1 for aligned, 0 for not."""

    contexts: list[str]
    texts: list[str]
    labels: np.ndarray

    @classmethod
    def of_triples(cls, triples: Sequence) -> Labelled:
        """Each triple's source (0) and target (1) in its context."""
        contexts = [t.context for t in triples for _ in range(2)]
        texts = [text for t in triples for text in (t.source, t.target)]
        return cls(contexts, texts, np.tile([0.0, 1.0], len(triples)))


class Embedder:
    """Mean-pooled last hidden states of a frozen encoder, each unique text embedded once."""

    def __init__(self, encoder: str, seed: int = 0, batch_size: int = 64, max_length: int = 256,
                 trust_remote_code: bool = False):
        import torch

        from secondthought.models.encoder import load_encoder

        self.tokenizer, self.model = load_encoder(encoder, seed, trust_remote_code, head=False)
        self.model.eval()
        self.batch_size, self.max_length = batch_size, max_length
        torch.manual_seed(seed)

    def __call__(self, texts: Sequence[str], progress: ProgressLine | None = None) -> np.ndarray:
        import torch

        unique = sorted(set(texts), key=len)  # similar lengths together: little padding
        vectors = {}
        with torch.no_grad():
            for start in range(0, len(unique), self.batch_size):
                chunk = unique[start : start + self.batch_size]
                batch = self.tokenizer(chunk, truncation=True, max_length=self.max_length, padding=True,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                vectors.update(zip(chunk, pooled.float().numpy()))
                if progress:
                    progress.update(start + len(chunk))
        return np.stack([vectors[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def _features(embed: Embedder, contexts: list[str], texts: list[str], progress: ProgressLine | None) -> np.ndarray:
    both = embed(contexts + texts, progress)
    c, t = both[: len(contexts)], both[len(contexts):]
    return np.concatenate([t, c * t], axis=1)


def unique_texts(data: Labelled) -> int:
    return len(set(data.contexts) | set(data.texts))


def train(spec: JudgeSpec, data: Labelled, folder: Path, progress: bool = True) -> dict:
    """Fit a judge on ``data`` and save it to ``folder``; its training figures."""
    started = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    if spec.kind == "frozen":
        from safetensors.numpy import save_file
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        line = ProgressLine("judge: embedding", unique_texts(data), "texts", enabled=progress)
        features = _features(Embedder(spec.encoder, spec.seed), data.contexts, data.texts, line)
        line.close()
        scaler = StandardScaler().fit(features)
        head = LogisticRegression(C=HEAD_C, max_iter=2000).fit(scaler.transform(features), data.labels)
        save_file({"mean": scaler.mean_.astype(np.float32), "scale": scaler.scale_.astype(np.float32),
                   "coef": head.coef_[0].astype(np.float32), "intercept": head.intercept_.astype(np.float32)},
                  str(folder / HEAD))
        figures = {"train_accuracy": float(head.score(scaler.transform(features), data.labels))}
    else:
        from secondthought.models.encoder import PairClassifier

        model = PairClassifier(spec.encoder, lr=spec.lr, seed=spec.seed)
        pairs = list(zip(data.contexts, data.texts))
        rng = np.random.default_rng(spec.seed)
        per_epoch = -(-len(pairs) // spec.batch_size)
        line = ProgressLine("judge: fine-tuning", per_epoch * spec.epochs, "steps", enabled=progress)
        losses = []
        for epoch in range(spec.epochs):
            order = rng.permutation(len(pairs))
            for start in range(0, len(order), spec.batch_size):
                idx = order[start : start + spec.batch_size]
                losses.append(model.train_step([pairs[i] for i in idx], data.labels[idx].tolist())["loss"])
                line.update(len(losses), loss=losses[-1])
        line.close()
        model.model.save_pretrained(folder)
        model.tokenizer.save_pretrained(folder)
        figures = {"first_loss": losses[0], "last_loss": losses[-1]}
    info = {"spec": asdict(spec), "train_pairs": len(data.texts), "seconds": round(time.time() - started, 1),
            **figures}
    write_json(folder / SETTINGS, info)  # last: the judge is complete
    return info


class Judge:
    """A trained judge loaded from its folder."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.info = self.read_info(folder)
        self.spec = JudgeSpec(**self.info["spec"])
        if self.spec.kind == "frozen":
            from safetensors.numpy import load_file

            self.head = load_file(str(folder / HEAD))
            self.embed = Embedder(self.spec.encoder, self.spec.seed)
        else:
            from secondthought.models.encoder import PairClassifier

            self.classifier = PairClassifier(str(folder))

    @staticmethod
    def read_info(folder: str | Path) -> dict:
        return json.loads((Path(folder) / SETTINGS).read_text())

    def probabilities(self, contexts: list[str], texts: list[str], progress: ProgressLine | None = None) -> np.ndarray:
        """P(aligned) for each (context, text)."""
        if self.spec.kind == "frozen":
            h = self.head
            x = (_features(self.embed, contexts, texts, progress) - h["mean"]) / h["scale"]
            logits = x @ h["coef"] + h["intercept"][0]
        else:
            logits = self.classifier.logits(list(zip(contexts, texts)))
        return 1 / (1 + np.exp(-logits))


def cached(spec: JudgeSpec, data_fingerprint: str, cache: Path, data: Callable[[], Labelled],
           progress: bool = True) -> tuple[Path, bool]:
    """The folder of the judge ``spec`` trained on ``data()`` (read only when it must be trained): from ``cache``
    when an earlier run trained it, else trained now. Returns (folder, reused). Concurrent trainers cannot leave a half-written judge:
    each trains in its own folder and renames it into place."""
    folder = cache / f"{spec.kind}-{spec.key(data_fingerprint)}"
    if (folder / SETTINGS).is_file():
        return folder, True
    scratch = cache / f".{folder.name}.{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    train(spec, data(), scratch, progress)
    try:
        scratch.rename(folder)
    except OSError:  # another run finished the same judge first
        shutil.rmtree(scratch, ignore_errors=True)
    return folder, False
