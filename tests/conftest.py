"""Shared fixtures. Threads are pinned: with another process on a core, torch's default
threading made a tiny forward pass 25x slower on the CI machine."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STORIES = SHARED / "models" / "stories260K" / "hf"


def need_shared():
    if not STORIES.is_dir():
        pytest.skip("../shared/data is not beside the checkout")


@pytest.fixture(scope="session")
def stories() -> Path:
    need_shared()
    return STORIES


def _tiny(family: str, directory: Path, tokenizer_from: Path | None) -> Path:
    import transformers

    from edgeprune.io.checkpoint import save

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=8, max_position_embeddings=256,
                  tie_word_embeddings=False)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**common)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so slicing errors show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return save(model, directory, tokenizer_from=tokenizer_from)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised GQA models of each family (Qwen2 with qkv biases, Qwen3 with q/k norms)."""
    root = tmp_path_factory.mktemp("tiny")
    from .tokenizer_zoo import make_tokenizer

    # each family with the tokenizer kind its checkpoints ship: SentencePiece for Llama/Mistral,
    # byte-level BPE with Qwen2's pre-tokenizer for Qwen (transformers reads a SentencePiece model
    # as byte-level under a Qwen config, and no runtime can then agree with it)
    spm = STORIES if STORIES.is_dir() else make_tokenizer("spm-model", root / "tok-spm", vocab=512)
    qwen = make_tokenizer("qwen2", root / "tok-qwen2", vocab=512)
    toks = {"llama": spm, "mistral": spm, "qwen2": qwen, "qwen3": qwen}
    return {f: _tiny(f, root / f, toks[f]) for f in ("llama", "qwen2", "qwen3", "mistral")}


@pytest.fixture()
def copy_dir(tmp_path):
    def _copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst
    return _copy
