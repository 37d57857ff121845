"""File names inside an artifact that several modules read: the writer, its runtime session,
the GenAI config, the format's layout and `inspect`. A leaf module (imports nothing), so each
of them can import it without a cycle through the format that lazily imports them."""

ONNX_MODEL = "model.onnx"  # the decoder graph inside an ONNX artifact folder (genai_config names it too)
