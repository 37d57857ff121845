"""Qwen2 (q/k/v biases) and Qwen3 (per-head q_norm/k_norm)."""
from __future__ import annotations

from .base import DecoderAdapter


class Qwen2Adapter(DecoderAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
    uniform_gguf_arch = "qwen2"
    genai_type = "qwen2"

    def gguf_architecture(self, shapes):
        # llama.cpp's qwen2 sizes attn_q as n_embd x n_embd and has no o/ffn_down bias; a model
        # whose head count or biases changed goes to `llama` (biases, rotary permuted) instead,
        # per-layer widths to `deci`. Both carry Qwen2's q/k/v biases.
        arch = super().gguf_architecture(shapes)
        s = shapes[0]
        if arch == "qwen2" and (s.num_heads * self.head_dim != self.hidden_size or s.added_bias):
            return "llama"
        return arch

    def has_attention_bias(self) -> bool:
        return True  # Qwen2 always carries q/k/v biases (o_proj has none)

    def native_bias_roles(self) -> tuple[str, ...]:
        # Unlike Llama's attention_bias flag, Qwen2's biases stop at q/k/v: o_proj has none.
        return ("q", "k", "v")

    def head_group_param_count(self, heads_per_group):
        d, hd = self.hidden_size, self.head_dim
        return 2 * d * hd * heads_per_group + 2 * d * hd + hd * heads_per_group + 2 * hd



class Qwen3Adapter(DecoderAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    head_norm_paths = ("self_attn.q_norm", "self_attn.k_norm")
    uniform_gguf_arch = "qwen3"
    genai_type = "qwen3"
    nonuniform_gguf_reason = (
        "llama.cpp has no architecture that reads per-layer widths and applies Qwen3's "
        "q_norm/k_norm ('deci' lacks them), so a non-uniform Qwen3 has no GGUF route today; "
        "export ONNX, or prune with uniform widths"
    )

