"""Llama family: Llama 1/2/3, TinyLlama, llama2.c conversions, and Mistral (same layout)."""
from __future__ import annotations

import importlib

from .base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama",)

    def modeling_module(self):
        return importlib.import_module("transformers.models.llama.modeling_llama")

    def decoder_layer_class(self):
        return self.modeling_module().LlamaDecoderLayer

    def rotary_class(self):
        return self.modeling_module().LlamaRotaryEmbedding


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    model_types = ("mistral",)

    def modeling_module(self):
        return importlib.import_module("transformers.models.mistral.modeling_mistral")

    def decoder_layer_class(self):
        return self.modeling_module().MistralDecoderLayer

    def rotary_class(self):
        return self.modeling_module().MistralRotaryEmbedding
