"""What keeps a run from destroying or mixing up the user's files, in one place for `prune`,
`export` and `build`:

- `refuse_overlap`: `--out` is never an input, inside one, nor holding one, so `--force`
  (which replaces `--out`) can never delete or overwrite what the run reads;
- `fingerprint` / `refuse_changed`: the content hashes of the inputs, recorded when a run
  starts, so that `--resume` never continues on a model, text or target that changed at the
  same path;

Where `--out` may be written and by whom (its lock, a mount point) is `io.outlock`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import OutputError

SMALL_FILE = 64 * 2**20  # hashed whole below this; above, header + size + sampled chunks
_SAMPLES, _CHUNK = 16, 64 * 2**10


class ChangedInputError(OutputError):
    """`--resume` on inputs whose content differs from the interrupted run's."""


def _resolved(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def refuse_overlap(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an `--out` that is an input, lies inside one, or holds one (symlinks and
    relative paths resolved): whatever `--force` replaces must not be read by the run.
    `inputs` maps a description (e.g. "--model") to a path; None and non-paths are skipped."""
    o = _resolved(out)
    for what, given in inputs.items():
        if given is None or not Path(str(given)).exists():
            continue  # a named data set, a hub id, or nothing
        p = _resolved(given)
        if o == p:
            how = "is"
        elif p in o.parents:
            how = "is inside"
        elif o in p.parents:
            how = "holds"
        else:
            continue
        raise OutputError(f"--out {out} {how} the input {what} {given}; edgeprune never writes over what it reads, "
                          "choose an --out outside the inputs (nothing was touched)")


# ---- content hashes of the inputs ---------------------------------------------------------
def file_hash(path: Path) -> str:
    """sha256 of a small file; of a large one, its size, first MiB (a safetensors header) and
    16 evenly spread chunks: a change of weights at the same shapes still shows."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= SMALL_FILE:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(str(size).encode())
        h.update(f.read(2**20))
        for k in range(_SAMPLES):
            f.seek(k * (size - _CHUNK) // (_SAMPLES - 1))
            h.update(f.read(_CHUNK))
    return "sampled:" + h.hexdigest()


def _model_files(model_dir: Path) -> list[Path]:
    names = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.json",
             "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
    return sorted({p for n in names for p in model_dir.glob(n) if p.is_file()})


def fingerprint(model=None, calib: Path | None = None, target: str | Path | None = None) -> dict[str, str]:
    """{what: hash} for the model's files, the calibration text (the file or folder it resolves
    to: `calibrate.data.local_path`, so a named set is hashed through its files) and the target
    TOML; an in-memory model not at all."""
    fp: dict[str, str] = {}
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        for p in _model_files(Path(model)):
            fp[f"model file {p.name}"] = file_hash(p)
    if calib is not None:
        path = Path(calib)
        if path.exists():
            for p in ([path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())):
                fp[f"calibration text {p}"] = file_hash(p)
    if target is not None and Path(str(target)).is_file():
        fp[f"target {target}"] = file_hash(Path(str(target)))
    return fp


class OtherRunError(ChangedInputError):
    """`--resume` with arguments other than the interrupted run's."""


def refuse_other_run(out: Path, recorded_args: dict | None, args: dict, recorded_inputs: dict | None,
                     inputs: dict[str, str]) -> None:
    """The one resume rule of prune, build and (through its builds) sweep: `--resume`
    continues only the run it interrupted, with the same arguments and the same inputs'
    content; anything else is refused naming each difference, before any work. A record of
    another revision of the method's arithmetic (`Method.revision`; none recorded: before
    revisions were) is refused on its own: no argument repeated would make its layers match."""
    if recorded_args is not None and "revision" in args and recorded_args.get("revision") != args["revision"]:
        was = recorded_args.get("revision")
        raise OtherRunError(f"{out} holds an interrupted `{args.get('method')}` run of "
                            f"{'an earlier edgeprune' if was is None else f'revision {was}'} (this one is revision "
                            f"{args['revision']}), whose finished layers this version would not reproduce; "
                            "pass --force to start over")
    if recorded_args != args:
        shown = "its arguments were not recorded" if recorded_args is None else ", ".join(
            f"{k}: was {recorded_args.get(k)!r}, now {args.get(k)!r}"
            for k in sorted(set(recorded_args) | set(args)) if recorded_args.get(k) != args.get(k))
        raise OtherRunError(f"{out} holds an interrupted run with other arguments ({shown}); "
                            "repeat them to resume, or pass --force to start over")
    refuse_changed(recorded_inputs, inputs, out)


def refuse_changed(recorded: dict | None, now: dict[str, str], out: Path) -> None:
    """`--resume` continues only on the inputs it started with: refuse naming what changed."""
    if recorded is None:
        raise ChangedInputError(f"{out} holds an interrupted run that did not record its inputs' hashes, so it cannot "
                                "be resumed safely; pass --force to start over")
    changed = [k for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ChangedInputError(f"the inputs changed since {out} was started ({shown}); resuming would mix two runs: "
                                "restore them, or pass --force to start over")


# ---- where a run is, for the one-line report of an unexpected failure ----------------------
_STAGE: dict[str, str | None] = {"name": None}


def set_stage(name: str | None) -> None:
    """Name the stage now running (`prune plan`, `export verify`, `build profile`...)."""
    _STAGE["name"] = name


def current_stage() -> str | None:
    return _STAGE["name"]
