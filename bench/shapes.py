"""Model shapes the benchmarks train, random-initialised from a config (no download)."""

from __future__ import annotations

from pathlib import Path

SHAPES = {
    "small-llama": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True),
    "smollm2-135m-shape": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                               num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True),
    "smollm2-1.7b-shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
                               tie_word_embeddings=True),
}


def model_folder(name: str, tokenizer, dest: Path) -> Path:
    """A model folder for ``name``: a shape above (random weights), or whatever ``build_base_model`` takes."""
    from secondthought.models.lm import build_base_model, build_random_model

    if name in SHAPES:
        return build_random_model(SHAPES[name], tokenizer, dest)
    return build_base_model(name, tokenizer, dest)
