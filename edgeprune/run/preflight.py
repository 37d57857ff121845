"""Everything a prune can refuse cheaply, before a caller creates any directory: the method,
missing, mis-shaped, non-finite or unreadable weights, the window size and count against
the model's context and the machine's memory, `--protect`, the tokenizer against the
embedding, and the calibration text. `prune` and `build` both call `preflight`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..calibrate import data as data_mod
from ..calibrate.data import tokenizer_for
from ..errors import DataError, PlanError
from ..methods import get

# Activation sets a layer-streamed method holds at once per calibration token (inputs,
# outputs, a dense copy), each hidden_size float32 values, plus the token id itself.
ACTIVATION_SETS = 3


def calibration(model_dir, source: str, n_samples: int, seq_len: int, seed: int, data_dir=None, work: Path | None = None):
    """Seeded calibration windows (cached in the work dir for resume); ids the embedding
    cannot look up (a tokenizer from another model) are refused here, naming both sizes."""
    cache = work / "calib.pt" if work else None
    if cache and cache.is_file():
        return read_windows(cache)
    key = _windows_key(model_dir, source, n_samples, seq_len, seed, data_dir)
    if key is not None and key in _WINDOWS:  # build's preflight made them; its prune stage (and a sweep's points) reuse them
        windows = _WINDOWS[key].clone()
    else:
        windows = data_mod.calibration_set(tokenizer_for(model_dir), source, n_samples, seq_len, seed, data_dir)
    if isinstance(model_dir, (str, Path)):
        from ..io.checkpoint import read_config_dict

        rows = read_config_dict(model_dir)["vocab_size"]
        if windows.numel() and int(windows.max()) >= rows:
            raise DataError(f"the tokenizer in {model_dir} gives token id {int(windows.max())}, but the embedding has "
                            f"only {rows} rows: the tokenizer belongs to another model; copy the base model's tokenizer files")
    if key is not None:
        _WINDOWS[key] = windows.clone()
    if cache:
        torch.save(windows, cache)
    return windows


# Calibration windows made in this process, by everything they depend on (the text's and the
# tokenizer's files by path, size and mtime): computed once per build, not once per check.
_WINDOWS: dict[tuple, torch.Tensor] = {}


def _windows_key(model_dir, source, n_samples: int, seq_len: int, seed: int, data_dir) -> tuple | None:
    """None for an in-memory model (its tokenizer is not a file to fingerprint)."""
    if not isinstance(model_dir, (str, Path)):
        return None
    from ..io.checkpoint import TOKENIZER_FILES

    def stat(p: Path):
        try:
            st = p.stat()
        except OSError:
            return None
        if p.is_dir():
            return (str(p), tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())))
        return (str(p.resolve()), st.st_size, st.st_mtime_ns)

    named = data_mod.named_path(str(source), data_dir, "calib") if data_mod.is_named(source) else None
    text = stat(named) if named else stat(Path(str(source))) if not data_mod.is_named(source) else None
    tok = tuple(stat(Path(model_dir) / f) for f in TOKENIZER_FILES)
    return (str(Path(model_dir).resolve()), str(source), n_samples, seq_len, seed, str(data_dir), text, tok)


def read_windows(cache: Path) -> torch.Tensor:
    """The calibration windows an interrupted run kept, or one line (a kill mid-write, a full disk)."""
    from ..io.schema import RESTART, SchemaError

    try:
        windows = torch.load(cache, weights_only=True)
    except Exception as e:
        raise SchemaError(f"{cache} is not a readable tensor file ({type(e).__name__}); {RESTART}") from None
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2:
        raise SchemaError(f"{cache} does not hold calibration windows (a 2-d tensor of token ids); {RESTART}")
    return windows


def available_memory() -> int | None:
    """MemAvailable from the kernel (bytes), or None where it is not known."""
    from ..measure.memory import proc_bytes

    return proc_bytes("MemAvailable", "/proc/meminfo")


def check_windows(cfg: dict, n_samples: int, seq_len: int, offload: bool = False) -> None:
    """Refuse windows longer than the model's context, and more windows than memory holds
    (before anything is tokenized: 10^8 windows would fill the machine while sampling)."""
    ctx = cfg.get("max_position_embeddings")
    if ctx and seq_len > ctx:
        raise PlanError(f"--seq-len {seq_len} is beyond the model's context of {ctx} tokens (max_position_embeddings); "
                        f"use --seq-len <= {ctx}")
    per_token = 8 + (0 if offload else ACTIVATION_SETS * 4 * cfg["hidden_size"])
    avail = available_memory()
    if avail is not None and n_samples * seq_len * per_token > avail:
        limit = max(1, avail // (seq_len * per_token))
        raise PlanError(f"--nsamples {n_samples} x --seq-len {seq_len} needs about "
                        f"{n_samples * seq_len * per_token / 1e9:.1f} GB for the calibration activations, more than the "
                        f"{avail / 1e9:.1f} GB of memory available; use --nsamples <= {limit}"
                        + ("" if offload else " (or --offload)"))


def check_protect(protect: tuple[int, ...] | None, num_layers: int) -> None:
    """Every `--protect` index names a layer of this model (negative ones count from the end)."""
    for p in protect or ():
        if not -num_layers <= p < num_layers:
            raise PlanError(f"--protect {p}: the model has {num_layers} layers; give indices 0..{num_layers - 1} "
                            f"(or -{num_layers}..-1 from the end)")


def check_weights(model_dir, progress: bool) -> None:
    """Missing, mis-shaped and NaN/Inf weights are refused before any work, naming the tensor."""
    if isinstance(model_dir, torch.nn.Module):
        return
    from ..calibrate.streaming import CheckpointSource

    src = CheckpointSource(model_dir)
    src.check_complete()
    src.store.check_finite(progress=progress)


def preflight(model_dir, method: str, calib: str, n_samples: int, seq_len: int, seed: int, data_dir=None,  # long: keywords
              progress: bool = True, protect: tuple[int, ...] | None = None, offload: bool = False,
              windows: bool = True, layers: int | str | None = None) -> torch.Tensor | None:
    """Every cheap refusal, in order of cost; returns the calibration windows when the
    method needs them and `windows` is set (a resumed run reads them from its work dir)."""
    m = get(method)
    if isinstance(model_dir, (str, Path)):
        from ..io.checkpoint import load_config, read_config_dict

        load_config(model_dir)  # architecture and every field checked before they are used here
        cfg = read_config_dict(model_dir)
        check_windows(cfg, n_samples, seq_len, offload)
        check_protect(protect, cfg["num_hidden_layers"])
        if isinstance(layers, int) and m.takes_layers:  # --layers N: the method's own rule, before any work
            from ..methods.base import PruneRequest, check_layer_count

            n = cfg["num_hidden_layers"]
            check_layer_count(layers, n, n - len(PruneRequest(protect=protect).protected(n)))
    check_weights(model_dir, progress)
    if m.needs_calibration:
        return calibration(model_dir, calib, n_samples, seq_len, seed, data_dir) if windows else None
    if Path(str(calib)).exists() and not os.path.isdir(str(calib)):
        data_mod.load_text(calib, "calib", data_dir)  # a given file is read even if unused: empty or binary is refused
    return None
