"""What a build's stages share: the `Build` context (its `state` is build_state.json), the
build's log line and its error. Kept apart from the stages so each stage module and the
checks that run before them import it without importing one another."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import defaults
from ..io.atomic import write_text
from ..errors import EdgePruneError
from ..io.outlock import OutLock
from .targets import Target


class BuildError(EdgePruneError):
    pass


QUIET = {"on": False}  # build --quiet: stage lines and progress bars off (warnings still show)


def log(msg: str) -> None:
    if not QUIET["on"] or msg.startswith("WARNING"):
        print(f"[edgeprune build] {msg}", file=sys.stderr)


@dataclass
class Build:
    """Everything the stages share; `state` is what `build_state.json` holds."""

    tgt: Target
    out_dir: Path
    model_dir: Path
    demo: bool
    calib: str
    defaulted: bool
    method: str
    ratio: float | None  # the parameter ratio asked of the method (None: search under a speed budget)
    why: str
    opts: dict
    align: int = defaults.ALIGN  # --align, else the target's
    budget: object = None  # a speed budget (budget.Budget) or None: the ratio
    options: dict = field(default_factory=dict)  # the method options a build sets (BUILD_OPTIONS): flag, target, default
    latency: object = None  # the latency model(s) of the target's artifacts (speed budgets; latency_binding)
    state: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    lock: OutLock | None = None
    created: bool = False  # this run made out_dir (a failure before any stage finished removes it)

    @property
    def done(self) -> dict:
        return self.state["done"]

    @property
    def formats(self) -> list[dict]:
        """The target's formats with the dtype `stage_dtypes` chose for each (its record under
        "choice"), each (format, dtype) once."""
        out, seen = [], set()
        for f in self.tgt.formats:
            rec = self.done.get("dtypes", {}).get(f"{f['format']}-{f['dtype']}")
            g = {"format": f["format"], "dtype": rec["chosen"] if rec else f["dtype"], **({"choice": rec} if rec else {})}
            if (g["format"], g["dtype"]) not in seen:
                seen.add((g["format"], g["dtype"]))
                out.append(g)
        return out

    def save_state(self) -> None:
        write_text(self.out_dir / "build_state.json", json.dumps(self.state, indent=1))
