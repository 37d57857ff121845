"""Which local solver should the search's ladders use? COMP's mask re-fit against SlimGPT's OBS,
per module, measured.

For every layer of each model, on the dense model's calibration inputs, each module (o_proj
with whole KV groups as units, down_proj with FFN channels) is cut to the same kept width three
ways, and the output error ‖ΔW X‖² / ‖W X‖² is measured from the input Gram:
  - obs:       SlimGPT's greedy OBS selection with OBS compensation (what the ladders use);
  - comp:      COMP's selection (diagonal importance with the mask re-fitted each step) and
               COMP's mask re-fit (one least-squares scale per kept column);
  - comp+obs:  COMP's selection, then OBS compensation (every kept weight re-fitted).
Prints a table (mean error per solver, and in how many modules each was best) and writes JSON.

    python benchmarks/local_solver.py --models stories260K=../shared/data/models/stories260K/hf --calib tinystories
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table, pin_threads, write_results  # noqa: E402


def errors(W: torch.Tensor, G: torch.Tensor, units: torch.Tensor, n_remove: int, damp: float) -> dict[str, float]:
    """Relative output error of the three solvers removing `n_remove` units."""
    from edgeprune.methods.linalg import damping, fit_mask, inverse_spd, mask_system, mask_trajectory
    from edgeprune.methods.obs import dynamic_group_sizes, hessian, obs_compensate, obs_remove

    def err(W2: torch.Tensor) -> float:
        D = W - W2
        return float((D @ G * D).sum() / (W @ G * W).sum())

    Wo = W.clone()
    steps = [1] * n_remove if units.shape[1] > 1 else dynamic_group_sizes(n_remove)
    obs_remove(Wo, inverse_spd(hessian(G.clone(), damp)), units, n_remove, steps)
    A = mask_system(W, G.clone())
    order, _ = mask_trajectory(A, units, n_remove, max(1, units.shape[0] // 32) if units.shape[1] == 1 else 1, "diag", damp)
    gone = set(order[:n_remove])
    keep = units[[u for u in range(units.shape[0]) if u not in gone]].reshape(-1)
    Wc = torch.zeros_like(W)
    Wc[:, keep] = W[:, keep] * fit_mask(A, keep, damping(A, damp))
    Wco = W.clone()
    S = units[sorted(gone)].reshape(-1)
    obs_compensate(Wco, inverse_spd(hessian(G.clone(), damp)), S)
    return {"obs": err(Wo), "comp": err(Wc), "comp+obs": err(Wco)}


@torch.no_grad()
def measure(model: str, calib: str, cuts: list[float], damp: float) -> list[dict]:
    from edgeprune.methods.base import units_of_groups
    from edgeprune.run.pipeline import calibration
    from edgeprune.calibrate.streaming import done, open_source, run_collecting, walk

    src = open_source(model)
    ad = src.adapter
    rows: list[dict] = []

    def seen(i, layer, cur):
        out, cols = run_collecting(src, layer, cur, ("o", "down"))
        s = ad.shape_of(layer)
        for role, units in (("o", units_of_groups(s, ad.head_dim)), ("down", torch.arange(s.intermediate_size).view(-1, 1))):
            W = ad.module(layer, role).weight.double()
            for cut in cuts:
                n = min(units.shape[0] - 1, max(1, round(cut * units.shape[0])))
                rows.append({"layer": i, "module": role, "cut": cut, "removed": n, **errors(W, cols[role].gram, units, n, damp)})
        return out

    acts = src.start(calibration(model, calib, 32, 128, 0), 8)
    done(walk(src, acts, range(src.num_layers), edit=seen), acts)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="name=path,... ")
    ap.add_argument("--calib", required=True, help="calibration set per model, comma-separated (one for all)")
    ap.add_argument("--cuts", default="0.25,0.5")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    pin_threads(a.threads)
    models = [m.split("=") for m in a.models.split(",")]
    calibs = a.calib.split(",") * (len(models) if "," not in a.calib else 1)
    table_rows, raw = [], {}
    for (name, path), calib in zip(models, calibs):
        rows = measure(path, calib, [float(c) for c in a.cuts.split(",")], a.damp)
        raw[name] = rows
        for module in ("o", "down"):
            sel = [r for r in rows if r["module"] == module]
            best = {k: sum(1 for r in sel if min(("obs", "comp", "comp+obs"), key=r.get) == k) for k in ("obs", "comp", "comp+obs")}
            table_rows.append({"model": name, "module": "attention (KV groups)" if module == "o" else "FFN channels",
                               "cases": len(sel), **{f"mean {k}": sum(r[k] for r in sel) / len(sel) for k in best},
                               **{f"best {k}": v for k, v in best.items()}})
    cols = [("model", "model"), ("module", "module"), ("cases", "layer x cut"),
            ("mean obs", "mean error: obs"), ("mean comp", "comp"), ("mean comp+obs", "comp+obs"),
            ("best obs", "lowest: obs"), ("best comp", "comp"), ("best comp+obs", "comp+obs")]
    table = (f"Relative output error ‖ΔW X‖²/‖W X‖² of one module cut by {a.cuts} of its units, on the dense model's "
             f"calibration inputs (32 x 128 tokens).\n\n" + markdown_table(table_rows, cols))
    print(table)
    write_results("local-solver", {"args": vars(a), "rows": raw}, table)


if __name__ == "__main__":
    main()
