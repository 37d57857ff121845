"""Save and load pruned (and plain) Hugging Face checkpoints.

A pruned model is saved as a normal Hugging Face directory. Uniform widths give a plain
`llama`/`qwen2`/... config that any tool loads. Per-layer widths keep the family's
`model_type` (so `AutoTokenizer.from_pretrained(dir)` needs no custom code) with the widths
in `edgeprune_layers` and the modeling code shipped beside it (`auto_map`): plain
`AutoModelForCausalLM.from_pretrained` fails loudly on the mismatched widths unless
`trust_remote_code=True`, and never silently re-initialises a mismatched weight.

Writes are atomic: files go to a hidden sibling directory which is renamed into place
after the manifest (`edgeprune.json`, written last) lists every file and its size.
`load` refuses a directory whose manifest is missing or whose files do not match it.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..errors import ModelError
from ..models import get_adapter
from ..models import pruned_modeling
from ..plan import Plan
from .atomic import flush_tree
from .outdir import INCOMPLETE, MANIFEST, check_output_dir, partial, remove_orphans

TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)


def _is_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not Path(s).exists()


def copy_tokenizer(src: str | Path | None, dst: Path) -> None:
    if src is None:
        return
    src = Path(src)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _write_manifest(directory: Path, extra: dict) -> None:
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"format": "edgeprune-checkpoint", "version": 1, "files": files, **extra}, indent=1))


def finish_config(cfg: dict, family: str, nonuniform: bool, directory: Path) -> dict:
    """Per-layer widths: the family's model_type, the modeling code shipped beside it."""
    if nonuniform:
        cls_cfg, cls_model = pruned_modeling.CLASSES[family]
        cfg["model_type"] = cls_cfg.model_type
        cfg["architectures"] = [cls_model.__name__]
        cfg["auto_map"] = {
            "AutoConfig": f"modeling_edgeprune.{cls_cfg.__name__}",
            "AutoModelForCausalLM": f"modeling_edgeprune.{cls_model.__name__}",
        }
        shutil.copy2(inspect.getfile(pruned_modeling), directory / "modeling_edgeprune.py")
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return cfg


@contextmanager
def staged_dir(directory: str | Path, force: bool = False) -> Iterator[Path]:
    """A hidden sibling directory that becomes `directory` only if the block succeeds.

    Into an existing edgeprune work directory (an interrupted run, or --force) the files
    are moved one by one, so that the work files beside them are kept until the caller
    removes them; the incomplete marker goes last.
    """
    out = Path(directory).absolute()
    check_output_dir(out, force=force, resume=True)
    tmp = partial(out.parent, out.name)
    remove_orphans(out.parent, out.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        flush_tree(tmp)
        if out.exists():
            for p in tmp.iterdir():
                target = out / p.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(p, target)
            tmp.rmdir()
            (out / INCOMPLETE).unlink(missing_ok=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_dir(tmp: Path, cfg: dict, family: str, nonuniform: bool, tokenizer_from, plan: Plan | None) -> None:
    """Config, tokenizer, plan and manifest (last): what every saved checkpoint carries."""
    finish_config(cfg, family, nonuniform, tmp)
    copy_tokenizer(tokenizer_from, tmp)
    if tokenizer_from is not None and (Path(tokenizer_from) / "generation_config.json").is_file() \
            and not (tmp / "generation_config.json").exists():
        shutil.copy2(Path(tokenizer_from) / "generation_config.json", tmp / "generation_config.json")
    if plan is not None:
        plan.save(tmp)
    _write_manifest(tmp, {"nonuniform": nonuniform, "family": family})


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    tokenizer_from: str | Path | None = None,
    plan: Plan | None = None,
    force: bool = False,
    max_shard_size: str | None = None,
) -> Path:
    """Write an in-memory `model` (dense or pruned) as a Hugging Face directory, atomically.
    Checkpoints on disk are pruned without loading them whole: `writeout.save_pruned`."""
    out = Path(directory).absolute()
    with staged_dir(out, force) as tmp:
        adapter = get_adapter(model.config)
        kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(tmp, safe_serialization=True, **kw)
        cfg = json.loads((tmp / "config.json").read_text())
        nonuniform = bool(getattr(model.config, "edgeprune_layers", None))
        finish_dir(tmp, cfg, adapter.family, nonuniform, tokenizer_from, plan)
    return out


def _check_manifest(path: Path) -> None:
    m = path / MANIFEST
    if (path / INCOMPLETE).exists():
        raise ModelError(f"{path} is an unfinished edgeprune run; resume it with --resume or delete it")
    if not m.is_file():
        raise ModelError(f"{path} is an edgeprune checkpoint without its manifest (an interrupted save?); re-run the save")
    from . import schema

    files = schema.read(m, schema.MANIFEST, "edgeprune manifest", "re-run the prune or save that wrote it")["files"]
    for name, size in files.items():
        p = path / name
        if not p.is_file() or p.stat().st_size != size:
            raise ModelError(f"{path}/{name} is missing or truncated (manifest says {size} bytes); re-run the save")


def read_config_dict(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model directory {path} does not exist; pass a local Hugging Face model directory or hub id")
    if not path.is_dir():
        raise ModelError(f"{path} is a file, not a model directory; pass the directory holding config.json")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{path} has no config.json, so it is not a Hugging Face model directory")
    try:
        d = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{cfg} is not valid JSON ({getattr(e, 'msg', type(e).__name__)}); re-download or re-save the model") from None
    if not isinstance(d, dict):
        raise ModelError(f"{cfg} holds a JSON {type(d).__name__}, not an object of fields; fix config.json or "
                         "re-download the model")
    return d


def load_config(path: str | Path):
    """The transformers config of a local directory (edgeprune or plain), validated."""
    from transformers import AutoConfig

    from .config_check import check_config, check_kinds

    d = read_config_dict(path)
    check_kinds(d, Path(path) / "config.json")
    model_type = d.get("model_type", "")
    nonuniform = bool(d.get("edgeprune_layers")) or model_type.startswith("edgeprune_")
    if nonuniform:
        pruned_modeling.register_with_transformers()
        _check_manifest(Path(path))
    elif (Path(path) / MANIFEST).exists():
        _check_manifest(Path(path))
    archs = d.get("architectures") or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ModelError(f"{path} holds a {archs[0]}, not a causal language model (…ForCausalLM)")
    from types import SimpleNamespace

    get_adapter(SimpleNamespace(**d))  # unsupported architecture -> one clear line
    check_config(d, Path(path) / "config.json")  # every field the adapter reads, typed and in range
    if nonuniform:  # the per-layer config class, never the family's uniform one
        return pruned_modeling.config_class(model_type).from_pretrained(str(path))
    return AutoConfig.from_pretrained(str(path))


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Load a dense or edgeprune-pruned checkpoint as a transformers `PreTrainedModel`.

    Returns fp32 on CPU unless asked otherwise, with the usual module names
    (`model.layers[i].mlp.down_proj`, `embed_tokens`, `lm_head`). A hub id is passed
    through to transformers (works online). Every weight must load: missing, unexpected
    or mismatched tensors are an error, never a silent re-initialisation.
    """
    from transformers import AutoModelForCausalLM

    path_s = str(path)
    if _is_hub_id(path_s):
        return AutoModelForCausalLM.from_pretrained(path_s, dtype=dtype).to(device).eval()
    return _load_local(Path(path), dtype).to(device).eval()


def _load_local(path: Path, dtype: torch.dtype) -> nn.Module:
    """Build the model empty, then copy the checkpoint in one tensor at a time.

    transformers' loader keeps the safetensors files mapped after loading (and after the
    model is gone): every page read stays in the process's RSS. Here each tensor is read,
    cast and copied, so the model costs its own size in the requested dtype and is freed
    with it. Buffers that are not in checkpoints (the rotary tables) are built anew.
    """
    from transformers import AutoModelForCausalLM

    from .weights import open_store

    config = load_config(path)
    config._attn_implementation = "sdpa"
    store = open_store(path, config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device="cpu")
    adapter = get_adapter(config)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    extra = sorted(set(store.keys()) - set(state))
    if extra:
        raise ModelError(f"{path}: unexpected tensor {extra[0]} (and {len(extra) - 1} more) in the checkpoint; "
                         "it does not match its config")
    with torch.no_grad():
        for key, param in state.items():
            if tied and key == adapter.lm_head_key:
                continue
            shape = store.shape(key)
            if tuple(shape) != tuple(param.shape):
                raise ModelError(f"{path}: {key} has shape {tuple(shape)}, the config implies {tuple(param.shape)}; "
                                 "the checkpoint does not match its config")
            store.read_into(key, param)
    parent, _, name = adapter.rotary_key.rpartition(".")
    setattr(model.get_submodule(parent), name, type(model.get_submodule(adapter.rotary_key))(config=config))
    if tied:
        model.tie_weights()
    if (path / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model
