"""The tests' tiny Hugging Face model: a 1-layer BERT (hidden size 16) with the real MiniLM tokenizer,
saved where ``from_pretrained`` finds it. Fast enough for multi-process runs on 2 cores."""

from __future__ import annotations

from pathlib import Path


def save_tiny_bert(path: Path, model_class: type, seed: int = 0, **config: object) -> Path:
    """Save a freshly initialised ``model_class`` (e.g. ``BertForMaskedLM``) and the tokenizer to ``path``."""
    import torch
    from transformers import AutoTokenizer, BertConfig

    from scripts.common.hf_data import minilm_model_dir

    tokenizer = AutoTokenizer.from_pretrained(minilm_model_dir())
    torch.manual_seed(seed)
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        **config,
    )
    model_class(bert).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
