"""The importance matrix fed to llama.cpp's quantizer from our own calibration pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="the 'gguf' extra (llama-cpp-python) is not installed")
from edgeprune.errors import ExportError  # noqa: E402
from edgeprune.calibrate.imatrix import collect  # noqa: E402
from exporters import export  # noqa: E402


def _windows(vocab: int = 512) -> torch.Tensor:
    return torch.randint(3, vocab, (4, 32), generator=torch.Generator().manual_seed(0))


def test_collect_matches_a_direct_hook(tiny_models):
    """mean x^2 per input column of each GGUF tensor, equal to what a plain hook sees."""
    import edgeprune

    d = tiny_models["llama"]
    imat = collect(d, _windows(), batch_size=2)
    assert len(imat) == 4 * 7
    assert imat["blk.0.attn_q.weight"] is imat["blk.0.attn_v.weight"]  # q/k/v read one input
    model = edgeprune.load(d)
    seen = []
    h = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for w in _windows().split(2):
            model(w)
    h.remove()
    ref = torch.cat(seen).double().pow(2).mean(0).float().numpy()
    assert imat["blk.1.ffn_down.weight"].shape == (96,)
    np.testing.assert_allclose(imat["blk.1.ffn_down.weight"], ref, rtol=1e-4)


def test_imatrix_reaches_llama_cpp(tiny_models, tmp_path):
    d = tiny_models["llama"]
    imat = collect(d, _windows())
    plain = export(d, "gguf", tmp_path / "plain.gguf", dtype="q4_k_m")
    weighted = export(d, "gguf", tmp_path / "imat.gguf", dtype="q4_k_m", imatrix=imat)
    assert weighted["verify"]["passed"] and weighted["verify"]["imatrix_tensors"] == 28
    # the quantizer used it: same layout, different rounding
    a, b = (tmp_path / "plain.gguf").read_bytes(), (tmp_path / "imat.gguf").read_bytes()
    assert len(a) == len(b) and a != b
    assert plain["verify"].get("imatrix_tensors") == 0


def test_imatrix_refused_for_other_dtypes(tiny_models, tmp_path):
    with pytest.raises(ExportError, match="k-quants only"):
        export(tiny_models["llama"], "gguf", tmp_path / "x.gguf", dtype="q8_0", imatrix={"a": np.ones(2)})
    assert not (tmp_path / "x.gguf").exists()


def test_cli_imatrix_refused_before_work(tiny_models, tmp_path, capsys):
    from edgeprune.cli.main import main

    assert main(["export", str(tiny_models["llama"]), "--format", "onnx", "--imatrix", "nonexistent-set",
                 "--out", str(tmp_path / "o")]) == 2
    assert "k-quants only" in capsys.readouterr().err and not (tmp_path / "o").exists()
