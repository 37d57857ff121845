"""Real checkpoints at real size: hub conventions, dtype kept, streamed apply/save/export/verify.

Fixtures are written the way hubs write them (edgeprune.io.synthetic): bf16, sharded
safetensors with an index, tied embeddings stored once under either name, or a
pytorch_model.bin. Widths are small here; benchmarks/scale.py measures real widths.
"""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgeprune.io.checkpoint import load
from edgeprune.errors import ModelError, OutputError
from edgeprune.plan import Plan
from edgeprune.apply.surgery import apply_plan
from edgeprune.io.synthetic import config_for, write_checkpoint

SMALL = dict(model_type="llama", hidden_size=128, intermediate_size=384, num_attention_heads=8, num_key_value_heads=4,
             head_dim=16, vocab_size=1536, tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
             max_position_embeddings=512)


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> Path:
    from edgeprune.io.demo import demo_text

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(demo_text("calib", limit=200_000))
    return p


def _ckpt(root: Path, name: str, **kw) -> Path:
    over = kw.pop("over", {})
    shape = {**SMALL, **over}
    return write_checkpoint(root / name, config_for(shape, 3, kw.pop("dtype", torch.bfloat16)), **kw)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    return {
        "tied_lm_head": _ckpt(root, "tied_lm_head", tied_as_lm_head=True, max_shard_bytes=300_000),
        "tied_embed": _ckpt(root, "tied_embed"),
        "untied_sharded": _ckpt(root, "untied_sharded", over={"tie_word_embeddings": False}, max_shard_bytes=400_000),
        "bin": _ckpt(root, "bin", layout="bin", dtype=torch.float16),
        "qwen2": _ckpt(root, "qwen2", over={"model_type": "qwen2", "tie_word_embeddings": False}),
    }


def _prune(model: Path, out: Path, method: str, calib: Path, **kw):
    from edgeprune.run.pipeline import prune

    return prune(model, method, ratio=kw.pop("ratio", 0.2), calib=str(calib), n_samples=8, seq_len=64, out=out,
                 progress=False, **kw)


@pytest.mark.parametrize("layout", ["tied_lm_head", "tied_embed", "untied_sharded", "bin"])
def test_hub_layouts_prune_and_reload(hub, layout, tmp_path, calib_file):
    """Every calibrated method reads tied/sharded/bin checkpoints; the result reloads in
    transformers' own loader and keeps the input dtype."""
    res = _prune(hub[layout], tmp_path / "out", "wanda-sp", calib_file)
    m = load(tmp_path / "out")
    dense = load(hub[layout])
    assert res.report["checkpoint"]["dtype"] == json.loads((hub[layout] / "config.json").read_text())["torch_dtype"]
    ids = torch.tensor([[1, 5, 9, 200]])
    assert torch.isfinite(m(ids).logits).all()
    if "tied" in layout:  # the tied matrix survives under the HF name, stored once
        assert torch.equal(m.get_output_embeddings().weight, dense.get_output_embeddings().weight.float())


@pytest.mark.parametrize("layout", ["tied_lm_head", "tied_embed"])
def test_default_method_on_tied_checkpoints(hub, layout, tmp_path, calib_file):
    """The default (search) reads a tied matrix stored under either name and reloads."""
    from edgeprune.methods import DEFAULT

    res = _prune(hub[layout], tmp_path / "out", DEFAULT, calib_file)
    assert abs(res.report["ratio_achieved"] - 0.2) <= 0.01
    m = load(tmp_path / "out")
    assert torch.isfinite(m(torch.tensor([[1, 5, 9, 200]])).logits).all()
    assert not (tmp_path / "out" / ".work").exists()  # the ladders on disk went with the work directory


@pytest.mark.parametrize("method", ["search", "slimgpt", "flap", "comp"])
def test_streamed_save_equals_in_memory_surgery(hub, method, tmp_path, calib_file):
    """The streamed writer is bit for bit the in-memory surgery (float32) cast to bf16, for
    plans with re-fitted weights (slimgpt), added biases (flap) and column scales (comp)."""
    src = hub["untied_sharded"]
    kw = {"protect": (), "ratio": 0.3} if method == "comp" else {}
    _prune(src, tmp_path / "out", method, calib_file, **kw)
    plan = Plan.load(tmp_path / "out")
    assert method == "flap" or len(plan.tensors) > 0
    ref = {k: v.to(torch.bfloat16) for k, v in apply_plan(load(src), plan).state_dict().items()}
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(got) == set(ref)
    diff = [k for k in got if not torch.equal(got[k], ref[k])]
    assert diff == []
    assert all(v.dtype == torch.bfloat16 for v in got.values())


def test_dtype_kept_and_bytes_shrink(hub, tmp_path, calib_file):
    src = hub["untied_sharded"]
    _prune(src, tmp_path / "bf16", "wanda-sp", calib_file)
    _prune(src, tmp_path / "f32", "wanda-sp", calib_file, dtype="f32")

    def nonembed_bytes(d: Path) -> int:
        from edgeprune.io.weights import WeightStore

        cfg = json.loads((d / "config.json").read_text())
        st = WeightStore(d, cfg, "model.embed_tokens.weight", "lm_head.weight")
        return sum(st[k].numel() * st[k].element_size() for k in st.keys() if "embed_tokens" not in k and "lm_head" not in k)

    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"
    ratio = nonembed_bytes(tmp_path / "bf16") / nonembed_bytes(src)
    assert ratio <= 0.85
    assert nonembed_bytes(tmp_path / "f32") == pytest.approx(2 * nonembed_bytes(tmp_path / "bf16"), rel=1e-6)


def test_sharded_output_has_a_valid_index(hub, tmp_path):
    from edgeprune.methods.base import PruneRequest  # noqa: F401  (plan without calibration)
    from edgeprune.run.pipeline import make_plan
    from edgeprune.apply.writeout import save_pruned

    src = hub["untied_sharded"]
    plan, _ = make_plan(src, "magnitude", PruneRequest(ratio=0.2, progress=False), None)
    info = save_pruned(src, plan, tmp_path / "out", max_shard_bytes=300_000, progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len({*index["weight_map"].values()}) == len(info["files"]) - 1 > 1
    assert index["metadata"]["total_size"] == info["bytes"]
    m = load(tmp_path / "out")  # transformers itself reads the shards through the index
    assert torch.isfinite(m(torch.tensor([[1, 2, 3]])).logits).all()


def test_index_disagreeing_with_shards_is_one_clear_error(hub, copy_dir):
    from edgeprune.calibrate.streaming import CheckpointSource

    d = copy_dir(hub["untied_sharded"])
    index = json.loads((d / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    other = sorted(set(index["weight_map"].values()) - {index["weight_map"][key]})[0]
    index["weight_map"][key] = other
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="disagree with their index"):
        CheckpointSource(d)
    index["weight_map"][key] = "model-00099-of-00099.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="missing"):
        CheckpointSource(d)


def test_truncated_safetensors_is_one_clear_error(hub, copy_dir):
    from edgeprune.calibrate.streaming import CheckpointSource

    d = copy_dir(hub["tied_embed"])
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated"):
        CheckpointSource(d)


def test_full_disk_refused_before_writing(hub, tmp_path, calib_file, monkeypatch):
    import edgeprune.io.tensorfiles as tf

    monkeypatch.setattr(tf, "free_bytes", lambda _p: 1000)
    with pytest.raises(OutputError, match="GB free"):
        _prune(hub["tied_embed"], tmp_path / "out", "wanda-sp", calib_file)
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())


def test_disk_filling_mid_write_leaves_no_checkpoint(hub, tmp_path, calib_file, monkeypatch):
    import edgeprune.io.tensorfiles as tf

    real = tf.StreamWriter.add
    calls = {"n": 0}

    def failing(self, name, t):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, t)

    monkeypatch.setattr(tf.StreamWriter, "add", failing)
    with pytest.raises(OutputError, match="disk full"):
        _prune(hub["tied_embed"], tmp_path / "out", "wanda-sp", calib_file)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0", "q4_k"])
def test_streamed_gguf_from_bf16_verifies(hub, tmp_path, calib_file, dtype):
    pytest.importorskip("llama_cpp")
    from exporters import export

    _prune(hub["untied_sharded"], tmp_path / "p", "slimgpt", calib_file)
    res = export(tmp_path / "p", "gguf", tmp_path / "p.gguf", dtype=dtype)
    assert res["verify"]["passed"] and res["verify"]["all_finite"]
    assert set(res["peak_memory"]["stages"]) == {"export", "verify"}


def test_streamed_onnx_f16_from_bf16_verifies(hub, tmp_path, calib_file):
    pytest.importorskip("onnxruntime")
    from exporters import export

    _prune(hub["qwen2"], tmp_path / "p", "wanda-sp", calib_file)
    res = export(tmp_path / "p", "onnx", tmp_path / "onnx", dtype="f16")
    assert res["verify"]["passed"]


def test_nan_weight_never_verifies(hub, tmp_path):
    pytest.importorskip("llama_cpp")
    from exporters import export
    from edgeprune.errors import EdgePruneError

    d = write_checkpoint(tmp_path / "nan", config_for({**SMALL, "tie_word_embeddings": False}, 2, torch.float32))
    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EdgePruneError, match="up_proj.weight holds NaN"):
        export(d, "gguf", tmp_path / "nan.gguf", dtype="f32")
    assert not (tmp_path / "nan.gguf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["nan"]


# A bare interpreter runs the command and reports its children's peak RSS: measured from
# pytest directly, the forked copy of pytest itself (before exec) would count as the child's.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(r.stderr); print(r.stdout.strip()); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def test_reported_peak_is_the_process_peak(hub, tmp_path, calib_file):
    """prune --json's peak covers every stage: at least 0.9x what the OS saw for the process."""
    cmd = [sys.executable, "-m", "edgeprune.cli.main", "prune", "--model", str(hub["untied_sharded"]), "--method", "slimgpt",
           "--ratio", "0.2", "--calib", str(calib_file), "--nsamples", "8", "--seq-len", "64",
           "--out", str(tmp_path / "o"), "--json", "--quiet", "--threads", "1"]
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, check=True)
    report_line, maxrss_kb = out.stdout.strip().splitlines()[-2:]
    rep = json.loads(report_line)
    assert set(rep["peak_memory"]["stages"]) == {"plan", "apply_save"}
    assert rep["peak_memory"]["peak_bytes"] >= 0.9 * int(maxrss_kb) * 1024


def test_unknown_dtype_is_refused(hub, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", "prune", "--model", str(hub["tied_embed"]), "--method",
                        "magnitude", "--ratio", "0.2", "--dtype", "int3", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "int3" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_llama3_rope_scaling_reaches_gguf(tmp_path, calib_file):
    """Llama-3.1/3.2 checkpoints carry rope_scaling 'llama3': written as rope_freqs.weight, verified
    dense (llama) and with per-layer widths (deci). Without the factors the logits differ by ~1e-2."""
    pytest.importorskip("llama_cpp")
    from exporters import export

    rope = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 64,
            "rope_type": "llama3"}
    shape = {**SMALL, "tie_word_embeddings": False, "rope_theta": 500000.0, "max_position_embeddings": 1024,
             "rope_scaling": rope, "head_dim": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
    d = write_checkpoint(tmp_path / "dense", config_for(shape, 3, torch.float32))
    assert export(d, "gguf", tmp_path / "d.gguf", dtype="f32")["verify"]["passed"]
    _prune(d, tmp_path / "p", "slimgpt", calib_file, ratio=0.3)
    res = export(tmp_path / "p", "gguf", tmp_path / "p.gguf", dtype="f32")
    assert res["verify"]["passed"] and res["architecture"] == "deci"


@pytest.mark.slow
def test_onnx_over_2gb_uses_external_data_within_memory(tmp_path):
    """A 2.5 GB float32 model: the ONNX export goes to external data (protobuf's 2 GB limit),
    verifies, and its reported peak stays within 1.5x the artifact plus 1 GiB."""
    pytest.importorskip("onnxruntime")
    from exporters import export

    shape = {**SMALL, "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 4,
             "head_dim": 128, "vocab_size": 131072, "tie_word_embeddings": False}
    d = write_checkpoint(tmp_path / "big", config_for(shape, 2, torch.float32), max_shard_bytes=10**9)
    res = export(d, "onnx", tmp_path / "onnx", dtype="f32")
    assert res["verify"]["passed"]
    assert (tmp_path / "onnx" / "model.onnx.data").stat().st_size > 2 * 1024**3
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size < 10 * 2**20
    assert res["peak_memory"]["peak_bytes"] <= 1.5 * res["bytes"] + 2**30


@pytest.mark.parametrize("dtype", ["q4_k_m", "q5_k_m", "q6_k"])
def test_k_quants_with_align_256_have_no_fallback(tmp_path, calib_file, dtype):
    """hidden 512, FFN 1536, 8/4 heads; wanda-sp 20% with --align 256: every 2-D weight but the
    embedding and the output is of the k-quant family, and the real bits per weight are reported."""
    pytest.importorskip("llama_cpp")
    from exporters import export

    shape = {**SMALL, "hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 8, "num_key_value_heads": 4,
             "head_dim": 64, "tie_word_embeddings": False}
    d = write_checkpoint(tmp_path / "dense", config_for(shape, 2, torch.bfloat16))
    _prune(d, tmp_path / "p", "wanda-sp", calib_file, align=256)
    res = export(tmp_path / "p", "gguf", tmp_path / "p.gguf", dtype=dtype)
    assert res["verify"]["passed"]
    assert res["fallbacks"] == [], res["fallbacks"]
    assert 4 < res["bits_per_weight"] < 8.5


def test_q4_k_alias_and_unaligned_fallbacks_are_reported(hub, tmp_path, calib_file):
    pytest.importorskip("llama_cpp")
    from exporters import export

    _prune(hub["untied_sharded"], tmp_path / "p", "wanda-sp", calib_file)  # widths not multiples of 256
    res = export(tmp_path / "p", "gguf", tmp_path / "p.gguf", dtype="q4_k")
    assert res["dtype"] == "q4_k_m" and res["verify"]["passed"]
    assert res["fallbacks"] and all(f["used"] not in ("Q4_K", "Q5_K", "Q6_K") for f in res["fallbacks"])


def test_gguf_disk_full_is_one_line_and_leaves_nothing(hub, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    import exporters.gguf_writer as gw
    from exporters import export

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gw, "_encode", full)
    with pytest.raises(OutputError, match="disk full while writing m.gguf"):
        export(hub["tied_embed"], "gguf", tmp_path / "m.gguf", dtype="q8_0")
    assert list(tmp_path.iterdir()) == []
