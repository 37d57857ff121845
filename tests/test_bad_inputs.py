"""Bad inputs and faults, one table: case -> expected message -> nothing left on disk.

Every case must end with exit status 2, exactly one line on stderr starting
`edgeprune: error:` (no traceback), no artifact, and every file that was there before
still there, unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgeprune.cli.main import main
from edgeprune.io.synthetic import config_for, write_checkpoint

SHAPE = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, vocab_size=1100, tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
             max_position_embeddings=256)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    write_checkpoint(root / "good", config_for(SHAPE, 2, torch.float32))
    (root / "calib.txt").write_text(("def f(x):\n    return x + 1\n\n" * 400))
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _nan_model(root: Path, tmp: Path) -> Path:
    d = _copy(root / "good", tmp / "nan")
    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.1.mlp.down_proj.weight"][3, 3] = float("inf")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def _no_tokenizer(root: Path, tmp: Path) -> Path:
    d = _copy(root / "good", tmp / "notok")
    for p in d.glob("tokenizer*"):
        p.unlink()
    return d


def _missing_tensor(root: Path, tmp: Path) -> Path:
    d = _copy(root / "good", tmp / "missing")
    sd = load_file(str(d / "model.safetensors"))
    del sd["model.layers.0.self_attn.v_proj.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def _config_only(root: Path, tmp: Path) -> Path:
    d = tmp / "cfgonly"
    d.mkdir()
    (d / "config.json").write_text((root / "good" / "config.json").read_text())
    return d


def _truncated(root: Path, tmp: Path) -> Path:
    d = _copy(root / "good", tmp / "trunc")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:5000])
    return d


def _user_dir(tmp: Path) -> Path:
    d = tmp / "mine"
    (d / "photos").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    return d


def _target(tmp: Path, **edits) -> Path:
    from edgeprune.run.targets import load_target

    text = load_target("cpu-x86").path.read_text()
    import re

    for old, new in edits.items():  # "re:PATTERN" edits whole lines by a regular expression
        pat = re.compile(old[3:], re.M) if old.startswith("re:") else re.compile(re.escape(old))
        assert pat.search(text), f"the cpu-x86 target no longer holds {old!r}: update this test"
        text = pat.sub(lambda _m: new, text)
    p = tmp / "t.toml"
    p.write_text(text)
    return p


def _binary(tmp: Path) -> Path:
    import sys

    p = tmp / "python.bin"
    p.write_bytes(Path(sys.executable).resolve().read_bytes()[:300_000])
    return p


PRUNE = ["prune", "--method", "wanda-sp", "--ratio", "0.2", "--nsamples", "4", "--seq-len", "32", "--quiet"]


def _pruned(root: Path, tmp: Path, name: str = "P") -> Path:
    """A copy (in the test's own tmp, so the snapshot covers it) of a checkpoint edgeprune pruned."""
    src = root / "pruned"
    if not src.exists():
        assert main([*PRUNE, "--model", str(root / "good"), "--calib", str(root / "calib.txt"), "--out", str(src)]) == 0
    return _copy(src, tmp / name)


def _build_dir_holding_model(root: Path, tmp: Path) -> Path:
    b = tmp / "B"
    _pruned(root, b, "model")
    (b / "build_state.json").write_text("{}")
    return b


def _symlink_to(target: Path, tmp: Path) -> Path:
    link = tmp / "link"
    link.symlink_to(target)
    return link


def _out_holding_calib(root: Path, tmp: Path) -> tuple[Path, Path]:
    o = _pruned(root, tmp, "O")
    (o / "calib.txt").write_text((root / "calib.txt").read_text())
    return o, o / "calib.txt"


def _edited_config(root: Path, tmp: Path, name: str, **edits) -> Path:
    d = _copy(root / "good", tmp / name)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(edits)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _float64(root: Path, tmp: Path) -> Path:
    d = _copy(root / "good", tmp / "f64")
    sd = {k: v.double() for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def _config_list(root: Path, tmp: Path) -> Path:
    d = _copy(root / "good", tmp / "cfglist")
    (d / "config.json").write_text("[1, 2]")
    return d


def _small_vocab(root: Path, tmp: Path) -> Path:
    """A model whose embedding (300 rows) is smaller than its tokenizer (about 1000 ids)."""
    return write_checkpoint(tmp / "smallvocab", config_for({**SHAPE, "vocab_size": 300}, 2, torch.float32))


def _pruned_config_edited(root: Path, tmp: Path) -> Path:
    """A pruned checkpoint whose config.json was edited to disagree with its weights; the
    manifest is updated too, so only the shape check can catch it."""
    d = _pruned(root, tmp)
    cfg = json.loads((d / "config.json").read_text())
    layers = cfg.get("edgeprune_layers")
    if layers:
        layers[0]["intermediate_size"] -= 1
    else:
        cfg["intermediate_size"] -= 1
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    man = json.loads((d / "edgeprune.json").read_text())
    man["files"]["config.json"] = (d / "config.json").stat().st_size
    (d / "edgeprune.json").write_text(json.dumps(man))
    return d


def _text(tmp: Path, name: str, content: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def _build_with_profile(tmp: Path, content: str) -> Path:
    b = tmp / "built"
    b.mkdir()
    (b / "profile.json").write_text(content)
    return b


def _gguf(root: Path, tmp: Path) -> Path:
    """A copy of a verified GGUF of the 256-context test model (exported once per module)."""
    import shutil

    src = root / "m.gguf"
    if not src.exists():
        assert main(["export", str(root / "good"), "--format", "gguf", "--out", str(src), "--quiet"]) == 0
    shutil.copy(src, tmp / "m.gguf")
    return tmp / "m.gguf"


def _genai_folder(tmp: Path, config: str) -> Path:
    d = tmp / "onnx"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"not read before the context check")
    (d / "genai_config.json").write_text(config)
    return d


def _sharded(root: Path, tmp: Path, name: str, drop_shard: bool = False, index: str | None = None) -> Path:
    """The test model in two shards with an index; optionally one shard deleted or the index replaced."""
    d = _copy(root / "good", tmp / name)
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {f"model-0000{i + 1}-of-00002.safetensors": keys[i::2] for i in range(2)}
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(d / fname), metadata={"format": "pt"})
    wm = {k: fname for fname, ks in shards.items() for k in ks}
    (d / "model.safetensors.index.json").write_text(index if index is not None else json.dumps({"weight_map": wm}))
    if drop_shard:
        (d / "model-00002-of-00002.safetensors").unlink()
    return d


def _header(root: Path, tmp: Path, name: str, header: bytes, length: int | None = None) -> Path:
    """The test model with its safetensors header replaced."""
    d = _copy(root / "good", tmp / name)
    n = len(header) if length is None else length
    (d / "model.safetensors").write_bytes(n.to_bytes(8, "little") + header + bytes(64))
    return d


def _tokenizer_edited(root: Path, tmp: Path, name: str, drop: str | None = None, truncate: str | None = None) -> Path:
    d = _copy(root / "good", tmp / name)
    if drop:
        (d / drop).unlink()
    if truncate:
        f = d / truncate
        f.write_text(f.read_text()[:40])
    return d


def _manifest_edited(root: Path, tmp: Path, text: str) -> Path:
    d = _pruned(root, tmp)
    (d / "edgeprune.json").write_text(text)
    return d


def _plain_file(tmp: Path) -> Path:
    p = tmp / "results"
    p.write_text("a file a user made")
    return p

# (case, argv builder(root, tmp) -> list, expected text in the one line)
CASES = [
    ("missing model path", lambda r, t: [*PRUNE, "--model", str(t / "nope"), "--calib", str(r / "calib.txt"), "--out", str(t / "o")],
     "does not exist"),
    ("dir with only config.json", lambda r, t: [*PRUNE, "--model", str(_config_only(r, t)), "--calib", str(r / "calib.txt"),
                                                "--out", str(t / "o")], "has no weights"),
    ("truncated safetensors", lambda r, t: [*PRUNE, "--model", str(_truncated(r, t)), "--calib", str(r / "calib.txt"),
                                            "--out", str(t / "o")], "truncated"),
    ("checkpoint missing a tensor", lambda r, t: [*PRUNE, "--model", str(_missing_tensor(r, t)), "--calib", str(r / "calib.txt"),
                                                  "--out", str(t / "o")], "v_proj.weight"),
    ("non-finite weight", lambda r, t: [*PRUNE, "--model", str(_nan_model(r, t)), "--calib", str(r / "calib.txt"),
                                        "--out", str(t / "o")], "down_proj.weight holds NaN or Inf"),
    ("model without tokenizer", lambda r, t: [*PRUNE, "--model", str(_no_tokenizer(r, t)), "--calib", str(r / "calib.txt"),
                                              "--out", str(t / "o")], "has no tokenizer"),
    ("binary calibration file", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(_binary(t)),
                                              "--out", str(t / "o")], "binary file"),
    ("--force over a user's directory", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"),
                                                      "--out", str(_user_dir(t)), "--force"], "did not write"),
    ("onnx --force over a user's directory", lambda r, t: ["export", str(r / "good"), "--format", "onnx",
                                                           "--out", str(_user_dir(t)), "--force"], "did not write"),
    ("gguf --out without .gguf", lambda r, t: ["export", str(r / "good"), "--format", "gguf", "--out", str(t / "model.bin")],
     "ending in .gguf"),
    ("gguf --force over a non-GGUF file", lambda r, t: ["export", str(r / "good"), "--format", "gguf", "--force",
                                                        "--out", str(_fake_gguf(t))], "not a GGUF file"),
    ("unknown export dtype", lambda r, t: ["export", str(r / "good"), "--format", "gguf", "--dtype", "q3_x",
                                           "--out", str(t / "m.gguf")], "unknown gguf dtype"),
    ("target: negative bandwidth", lambda r, t: ["build", "--model", str(r / "good"), "--out", str(t / "b"),
                                                 "--target", str(_target(t, **{"bandwidth_gb_s = 51.2": "bandwidth_gb_s = -5"}))],
     "hardware.bandwidth_gb_s must be a number > 0"),
    ("target: zero bandwidth", lambda r, t: ["build", "--model", str(r / "good"), "--out", str(t / "b"),
                                             "--target", str(_target(t, **{"bandwidth_gb_s = 51.2": "bandwidth_gb_s = 0"}))],
     "hardware.bandwidth_gb_s must be a number > 0"),
    ("target: integer ratio", lambda r, t: ["build", "--model", str(r / "good"), "--out", str(t / "b"),
                                            "--target", str(_target(t, **{"speedup = 1.2": "ratio = 1"}))], "pruning.ratio"),
    ("target: dtype typo", lambda r, t: ["build", "--model", str(r / "good"), "--out", str(t / "b"),
                                         "--target", str(_target(t, **{'dtype = "q8_0"': 'dtype = "q8"'}))],
     "is not a gguf dtype"),
    ("build: binary calibration file", lambda r, t: ["build", "--model", str(r / "good"), "--calib", str(_binary(t)),
                                                     "--out", str(t / "b")], "binary file"),
    ("build: non-finite weight", lambda r, t: ["build", "--model", str(_nan_model(r, t)), "--out", str(t / "b"),
                                               "--calib", str(r / "calib.txt")], "holds NaN or Inf"),
    ("--device cuda without CUDA", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"),
                                                 "--out", str(t / "o"), "--device", "cuda"], "--device cuda"),
    ("target: unknown method", lambda r, t: ["build", "--model", str(r / "good"), "--out", str(t / "b"),
                                             "--target", str(_target(t, **{'method = "search"': 'method = "searchh"'}))],
     "pruning.method"),
    # --force never replaces an input, an output holding one, nor writes inside one (issue 26)
    ("prune --out is the input, --force", lambda r, t: [*PRUNE, "--model", str(_pruned(r, t)), "--calib", str(r / "calib.txt"),
                                                        "--out", str(t / "P"), "--force"], "is the input --model"),
    ("prune --out is a symlink to the input", lambda r, t: [*PRUNE, "--model", str(_pruned(r, t)), "--calib", str(r / "calib.txt"),
                                                            "--out", str(_symlink_to(t / "P", t)), "--force"], "is the input"),
    ("prune --out holds the --calib file", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(_out_holding_calib(r, t)[1]),
                                                         "--out", str(t / "O"), "--force"], "holds the input --calib"),
    ("build --out holds the input model", lambda r, t: ["build", "--model", str(_build_dir_holding_model(r, t) / "model"),
                                                        "--out", str(t / "B"), "--force", "--method", "wanda-sp",
                                                        "--calib", str(r / "calib.txt")], "holds the input --model"),
    ("export onnx --out is the input", lambda r, t: ["export", str(_pruned(r, t)), "--format", "onnx", "--out", str(t / "P"),
                                                     "--force"], "is the input model"),
    ("export gguf --out inside the input", lambda r, t: ["export", str(_pruned(r, t)), "--format", "gguf",
                                                         "--out", str(t / "P" / "m.gguf")], "is inside the input model"),
    # malformed checkpoints (issue 26's tracebacks table)
    ("float64 weights", lambda r, t: [*PRUNE, "--model", str(_float64(r, t)), "--calib", str(r / "calib.txt"), "--out", str(t / "o")],
     "is stored as F64"),
    ("unknown rope_scaling type", lambda r, t: [*PRUNE, "--model", str(_edited_config(r, t, "rope", rope_scaling={"rope_type": "foobar", "factor": 2.0})),
                                                "--calib", str(r / "calib.txt"), "--out", str(t / "o")], "type 'foobar'"),
    ("config.json holding a list", lambda r, t: [*PRUNE, "--model", str(_config_list(r, t)), "--calib", str(r / "calib.txt"),
                                                 "--out", str(t / "o")], "holds a JSON list"),
    ("config field of the wrong type", lambda r, t: [*PRUNE, "--model", str(_edited_config(r, t, "hs", hidden_size="64")),
                                                     "--calib", str(r / "calib.txt"), "--out", str(t / "o")], "hidden_size must be"),
    ("tokenizer ids beyond the embedding", lambda r, t: [*PRUNE, "--model", str(_small_vocab(r, t)), "--calib", str(r / "calib.txt"),
                                                         "--out", str(t / "o")], "tokenizer belongs to another model"),
    ("export: tokenizer beyond the embedding", lambda r, t: ["export", str(_small_vocab(r, t)), "--format", "gguf",
                                                             "--out", str(t / "m.gguf")], "tokenizer belongs to another model"),
    ("build: tokenizer beyond the embedding", lambda r, t: ["build", "--model", str(_small_vocab(r, t)), "--out", str(t / "b"),
                                                            "--calib", str(r / "calib.txt")], "but the embedding has only 300 rows (no row for"),
    ("build --dry-run: tokenizer beyond the embedding", lambda r, t: ["build", "--dry-run", "--model", str(_small_vocab(r, t)),
                                                                      "--out", str(t / "b")], "(no row for"),
    ("vocab_size disagreeing with the embedding", lambda r, t: [*PRUNE, "--model", str(_edited_config(r, t, "vs", vocab_size=1200)),
                                                                "--calib", str(r / "calib.txt"), "--out", str(t / "o")], "fix vocab_size"),
    ("export: vocab_size disagreeing", lambda r, t: ["export", str(_edited_config(r, t, "vs", vocab_size=1200)), "--format", "gguf",
                                                     "--out", str(t / "m.gguf")], "fix vocab_size"),
    ("export: pruned config disagreeing with its weights", lambda r, t: ["export", str(_pruned_config_edited(r, t)), "--format", "gguf",
                                                                         "--out", str(t / "m.gguf")], "do not match their config"),
    # flags
    ("--protect a,b", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"), "--out", str(t / "o"),
                                    "--protect", "a,b"], "argument --protect: 'a' is not a layer index"),
    ("--protect 99", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"), "--out", str(t / "o"),
                                   "--protect", "99"], "--protect 99: the model has 2 layers"),
    ("--ratio out of range", lambda r, t: [*PRUNE[:3], "--ratio", "1.5", "--model", str(r / "good"), "--out", str(t / "o")],
     "argument --ratio: 1.5 is outside (0, 1)"),
    ("--seq-len beyond the context", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"),
                                                   "--out", str(t / "o"), "--seq-len", "1000"], "beyond the model's context of 256"),
    ("absurd --nsamples", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"),
                                        "--out", str(t / "o"), "--nsamples", "100000000"], "use --nsamples <="),
    ("empty --calib with magnitude", lambda r, t: ["prune", "--method", "magnitude", "--ratio", "0.2", "--model", str(r / "good"),
                                                   "--calib", str(_text(t, "empty.txt", "")), "--out", str(t / "o")], "is empty"),
    ("build: --nsamples beyond memory", lambda r, t: ["build", "--model", str(r / "good"), "--out", str(t / "b"), "--method", "wanda-sp",
                                                      "--calib", str(r / "calib.txt"), "--nsamples", "100000000"], "use --nsamples <="),
    # data and read-back files
    ("a .jsonl.gz that is not gzip", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--out", str(t / "o"),
                                                   "--calib", str(_text(t, "c.jsonl.gz", '{"text": "hello"}\n'))], "not a complete gzip file"),
    ("inspect: corrupt plan JSON", lambda r, t: ["inspect", str(_text(t, "plan.json", '{"format": "edgeprune-plan", "meth'))],
     "not a valid edgeprune plan (not readable JSON"),
    ("inspect: plan JSON missing fields", lambda r, t: ["inspect", str(_text(t, "plan.json", '{"format": "edgeprune-plan"}'))],
     "not a valid edgeprune plan (method is missing); re-run the prune"),
    ("inspect --plot into a directory", lambda r, t: ["inspect", str(r / "good"), "--plot", str(t)], "is a directory"),
    ("bench: truncated profile.json", lambda r, t: ["bench", str(_build_with_profile(t, '{"target": {"name": "cpu'))],
     "not a valid build profile (not readable JSON"),
    ("bench: {} profile.json", lambda r, t: ["bench", str(_build_with_profile(t, "{}"))], "(target is missing); re-run the build"),
    ("target: formats = []", lambda r, t: ["build", "--model", str(r / "good"), "--out", str(t / "b"), "--target", str(_target(
        t, **{"re:^formats = .*$": "formats = []"}))], "artifacts.formats is empty"),
    # issue 26, second pass: windows, contexts, shards, headers, tokenizers, data, --out
    ("--nsamples beyond the text", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"),
                                                 "--out", str(t / "o"), "--nsamples", "5000"], "windows of --seq-len 32; use --nsamples <="),
    ("export --imatrix --seq-len beyond the context", lambda r, t: ["export", str(r / "good"), "--format", "gguf", "--dtype", "q4_k_m",
                                                                     "--imatrix", str(r / "calib.txt"), "--seq-len", "1000",
                                                                     "--out", str(t / "m.gguf")], "beyond the model's context of 256"),
    ("bench --context beyond the GGUF's context", lambda r, t: ["bench", str(_gguf(r, t)), "--context", "100000"],
     "256 tokens (llama.context_length in its GGUF metadata); use --context <= 224"),
    ("bench --context beyond genai_config's", lambda r, t: ["bench", str(_genai_folder(t, '{"model": {"context_length": 512}}')),
                                                            "--context", "1000"], "512 tokens (context_length in its genai_config.json)"),
    ("bench: malformed genai_config.json", lambda r, t: ["bench", str(_genai_folder(t, '{"model": {"context_length": "512"}}'))],
     "is not a valid onnxruntime-genai config (model.context_length must be"),
    ("a shard missing from the index", lambda r, t: [*PRUNE, "--model", str(_sharded(r, t, "sh", drop_shard=True)),
                                                     "--calib", str(r / "calib.txt"), "--out", str(t / "o")], "which is missing from"),
    ("a shard index whose weight_map is a list", lambda r, t: ["export", str(_sharded(r, t, "sh", index='{"weight_map": [1]}')),
                                                               "--format", "gguf", "--out", str(t / "m.gguf")],
     "is not a valid shard index (weight_map must be an object"),
    ("a safetensors header entry that is not an object", lambda r, t: [*PRUNE, "--model", str(_header(r, t, "h", b'{"a.weight": 5}')),
                                                                       "--calib", str(r / "calib.txt"), "--out", str(t / "o")],
     "is not a valid safetensors header (a.weight must be an object"),
    ("a safetensors header length past the file", lambda r, t: ["export", str(_header(r, t, "h", b"{}", length=2**40)), "--format",
                                                                "gguf", "--out", str(t / "m.gguf")], "is not a readable safetensors file"),
    ("a truncated tokenizer.json", lambda r, t: [*PRUNE, "--model", str(_tokenizer_edited(r, t, "tk", truncate="tokenizer.json")),
                                                 "--calib", str(r / "calib.txt"), "--out", str(t / "o")], "could not be loaded (JSONDecodeError"),
    ("export: a truncated tokenizer.json", lambda r, t: ["export", str(_tokenizer_edited(r, t, "tk", truncate="tokenizer.json")),
                                                         "--format", "gguf", "--out", str(t / "m.gguf")], "could not be loaded"),
    ("tokenizer_config.json without tokenizer.json", lambda r, t: ["export", str(_tokenizer_edited(r, t, "tk", drop="tokenizer.json")),
                                                                   "--format", "onnx", "--out", str(t / "onnx")], "could not be loaded"),
    ("a JSON calibration file of numbers", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--out", str(t / "o"),
                                                         "--calib", str(_text(t, "c.json", "[1, 2, 3]"))], "a JSON record is int 1"),
    ("Llama hidden_size not a multiple of its heads", lambda r, t: [*PRUNE, "--model", str(_edited_config(
        r, t, "hd", num_attention_heads=5, num_key_value_heads=5)), "--calib", str(r / "calib.txt"), "--out", str(t / "o")],
     "hidden_size 64 is not a multiple of num_attention_heads 5"),
    ("a pruned checkpoint's manifest truncated", lambda r, t: ["export", str(_manifest_edited(r, t, '{"format": "edgep')), "--format",
                                                               "gguf", "--out", str(t / "m.gguf")], "edgeprune.json is not a valid edgeprune manifest"),
    ("a pruned checkpoint's manifest without files", lambda r, t: [*PRUNE, "--model", str(_manifest_edited(
        r, t, '{"format": "edgeprune-checkpoint"}')), "--calib", str(r / "calib.txt"), "--out", str(t / "o")], "(files is missing)"),
    ("head_dim disagreeing with the weights", lambda r, t: ["export", str(_edited_config(r, t, "hd", head_dim=32)), "--format", "gguf",
                                                           "--out", str(t / "m.gguf")], "the weights do not match their config"),
    ("num_key_value_heads not dividing the heads", lambda r, t: [*PRUNE, "--model", str(_edited_config(r, t, "kv", num_key_value_heads=3)),
                                                                 "--calib", str(r / "calib.txt"), "--out", str(t / "o")],
     "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("prune --out is a file", lambda r, t: [*PRUNE, "--model", str(r / "good"), "--calib", str(r / "calib.txt"),
                                            "--out", str(_plain_file(t))], "exists and is a file"),
    ("build --out is a file", lambda r, t: ["build", "--model", str(r / "good"), "--calib", str(r / "calib.txt"), "--method",
                                            "wanda-sp", "--out", str(_plain_file(t))], "exists and is a file"),
    ("export onnx --out is a file", lambda r, t: ["export", str(r / "good"), "--format", "onnx", "--out", str(_plain_file(t)), "--force"],
     "is not an edgeprune artifact"),
]


def _fake_gguf(tmp: Path) -> Path:
    p = tmp / "thesis.gguf"
    p.write_text("my thesis, misnamed")
    return p


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, argv, expected, base, tmp_path, capsys):
    args = argv(base, tmp_path)
    before = _snapshot(tmp_path)
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("edgeprune: error:")]
    assert rc == 2, err
    assert len(errors) == 1 and expected in errors[0], err
    assert not any("Traceback" in line for line in err)
    assert _snapshot(tmp_path) == before, "files were created, changed or deleted"
    assert not any(".partial" in p.name for p in tmp_path.rglob("*"))


def test_resume_with_other_arguments_is_refused(base, tmp_path, capsys, monkeypatch):
    """An interrupted prune keeps its work; --resume with another ratio names the difference."""
    import edgeprune.run.pipeline as pl

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "o"
    argv = [*PRUNE, "--model", str(base / "good"), "--calib", str(base / "calib.txt"), "--out", str(out)]
    monkeypatch.setattr(pl, "save_pruned", interrupt)
    assert main(argv) == 130
    monkeypatch.undo()
    assert (out / ".edgeprune-incomplete").exists()
    capsys.readouterr()
    assert main([*argv[:4], "0.3", *argv[5:], "--resume"]) == 2
    err = capsys.readouterr().err
    assert "ratio: was 0.2, now 0.3" in err
    assert main([*argv, "--resume"]) == 0  # same arguments: resumes and finishes
    assert json.loads((out / "edgeprune.json").read_text())["format"] == "edgeprune-checkpoint"
    assert not (out / ".work").exists()


def test_cli_fuzz(base, tmp_path, capsys):
    """Seeded random mixes of valid and invalid flags: each run ends in exit 0 with a
    verified artifact (or a saved checkpoint), or exit 2 with one line and no traceback."""
    import random

    rng = random.Random(1234)
    user = _user_dir(tmp_path / "u")
    pools = {
        "method": ["wanda-sp", "magnitude", "slimgpt", "nope", "flap"],
        "ratio": ["0.2", "0.35", "1.5", "abc", "-0.1", "0"],
        "dtype": [None, "bf16", "f32", "f8"],
        "calib": [str(base / "calib.txt"), str(_binary(tmp_path)), str(tmp_path / "absent.txt")],
        "fmt": [("gguf", "q8_0"), ("gguf", "f32"), ("gguf", "q2"), ("onnx", "f32"), ("onnx", "q8_0")],
    }
    for k in range(12):
        out = user if rng.random() < 0.15 else tmp_path / f"o{k}"
        argv = [*PRUNE[:1], "--method", rng.choice(pools["method"]), "--ratio", rng.choice(pools["ratio"]),
                "--calib", rng.choice(pools["calib"]), "--model", str(base / "good"), "--out", str(out),
                "--nsamples", "4", "--seq-len", "32", "--quiet"]
        dtype = rng.choice(pools["dtype"])
        argv += ["--dtype", dtype] if dtype else []
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own refusals: exit 2, usage + one error line
            rc = e.code
        err = capsys.readouterr().err
        assert rc in (0, 2), (argv, err)
        assert "Traceback" not in err
        if rc == 2:
            assert sum(line.startswith(("edgeprune: error:", "edgeprune prune: error:")) for line in err.splitlines()) == 1, err
            assert user.joinpath("notes.txt").read_text() == "my notes"
            continue
        fmt, edt = rng.choice(pools["fmt"])
        art = tmp_path / (f"a{k}.gguf" if fmt == "gguf" else f"a{k}")
        rc = main(["export", str(out), "--format", fmt, "--dtype", edt, "--out", str(art), "--quiet"])
        err = capsys.readouterr().err
        assert rc in (0, 2) and "Traceback" not in err, err
        if rc == 0:
            report = art.with_name(art.name + ".verify.json") if fmt == "gguf" else art / "model.onnx.verify.json"
            assert json.loads(report.read_text())["passed"] is True
        else:
            assert not art.exists()


def test_a_file_rewritten_with_nan_after_a_clean_read_is_refused(base, tmp_path):
    """The finite check remembers tensors it already passed (the fitness reads them many
    times), keyed by the file's identity: a checkpoint rewritten in place is checked again."""
    from edgeprune.errors import ModelError
    from edgeprune.io.checkpoint import load_config
    from edgeprune.io.weights import open_store

    d = _copy(base / "good", tmp_path / "m")
    key = "model.layers.1.mlp.down_proj.weight"
    assert torch.isfinite(open_store(d, load_config(d))[key]).all()
    sd = load_file(str(d / "model.safetensors"))
    sd[key][0, 0] = float("nan")
    with open(d / "model.safetensors", "r+b") as f:  # same path, same size, written in place
        from safetensors.torch import save

        f.write(save(sd, metadata={"format": "pt"}))
    with pytest.raises(ModelError, match="holds NaN or Inf"):
        open_store(d, load_config(d))[key]
