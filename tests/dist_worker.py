"""One rank of tests/test_distributed.py (or the single process it is compared with).

    python tests/dist_worker.py prune MODEL OUT METHOD[,METHOD...]
        prunes MODEL with each method into OUT/<method> through `edgeprune.run.pipeline.prune`
        (what `edgeprune prune` calls), after joining the group the environment describes
        (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: what torchrun sets);
    python tests/dist_worker.py fail RANK run|put -- CLI ARGS...
        runs `edgeprune CLI ARGS` with rank RANK failing (see `fail_on`).
The launcher lives in the test; a file of its own because spawned ranks import it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's edgeprune first

import torch  # noqa: E402

# One request for every method: enough tokens (16 x 64) that no choice rests on a near tie.
REQUEST = dict(ratio=0.3, calib="tinystories", n_samples=16, seq_len=64, seed=0, progress=False, search_evals=16)


def prune_all(model: str, out: str, methods: list[str]) -> int:
    from edgeprune import dist
    from edgeprune.run.pipeline import prune

    dist.init("cpu")
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        for m in methods:
            prune(model, m, out=Path(out) / m, **REQUEST)
    finally:
        dist.close()
    return 0


def fail_on(rank: int, where: str, argv: list[str]) -> int:
    """The CLI, with one rank raising (a crash no input check foresees): in its second layer
    pass (where="run"), or when the third layer's decision is saved (where="put": two layers
    are finished in the resume state, so a resumed run has something to continue)."""
    from edgeprune.cli import main as cli
    from edgeprune.run import pipeline
    from edgeprune.calibrate import streaming

    if int(os.environ.get("RANK", "0")) == rank:
        owner, name, nth = (streaming.LayerSource, "run", 2) if where == "run" else (pipeline.ResumeState, "put", 3)
        real, calls = getattr(owner, name), [0]

        def failing(self, *a, **k):
            calls[0] += 1
            if calls[0] == nth:
                raise RuntimeError(f"injected failure in {name}")
            return real(self, *a, **k)

        setattr(owner, name, failing)
    return cli.main(argv)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "prune":
        sys.exit(prune_all(sys.argv[2], sys.argv[3], sys.argv[4].split(",")))
    sys.exit(fail_on(int(sys.argv[2]), sys.argv[3], sys.argv[sys.argv.index("--") + 1:]))
