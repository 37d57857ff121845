"""SCRATCH ONLY (issue 25 item 3): a stub format proving that a format is one module plus
one registration. It stores llama.cpp's GGUF under another name and suffix."""
from __future__ import annotations

from pathlib import Path

from edgeprune.errors import OutputError

from .format_gguf import GGUF
from .formats import register


class Stub(GGUF):
    name = "stub"
    dtypes = ("f32", "f16")
    describe = "a .stub file"

    def artifact_name(self, dtype: str) -> str:
        return f"model-{dtype}.stub"

    def is_artifact(self, p: Path) -> bool:
        return p.suffix == ".stub" and p.is_file()

    def check_out(self, out: Path) -> None:
        if out.suffix != ".stub":
            raise OutputError(f"--out {out.name} for the stub format must end in .stub")


register(Stub())
