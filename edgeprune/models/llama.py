"""Llama family: Llama 1/2/3, TinyLlama, llama2.c conversions, and Mistral (same layout)."""
from __future__ import annotations

from .base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama",)
    heads_divide_hidden = True


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    model_types = ("mistral",)
    genai_type = "mistral"
    heads_divide_hidden = False
