"""Structured Optimal Brain Surgeon: the math SlimGPT, search's ladders and its re-fit share.

For a linear layer y = W x with inputs X, H = 2 X Xᵀ + λI. Removing the columns S of W and
compensating the rest is W ← W − W_:,S [H⁻¹]_SS⁻¹ [H⁻¹]_S,:, at the cost tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ);
H⁻¹ is then downdated the same way. Units are groups of columns (one FFN channel, one head,
one KV group) removed together.

Why `OBSState` shrinks its matrices: once a unit is gone its rows and columns of H⁻¹ and W
take no further part (the downdate of the kept block reads only kept entries), so after each
step both are compacted to the kept units, in their own memory. Removing 7/8 of an FFN
(search's ladder) then costs ∫ n² dn ≈ n³/3 instead of n² · 7n/8, about 2.6x fewer flops, and
the downdate runs in place (addmm_), so no second n x n matrix exists during a removal.
"""
from __future__ import annotations

import torch

from .linalg import inverse_spd

ROW_BLOCK = 256  # rows moved at a time when a matrix is compacted in place


def hessian(gram: torch.Tensor, damp: float, consume: bool = False) -> torch.Tensor:
    """H = 2 XᵀX + λI, λ = damp · mean diag (SlimGPT's damping): a new matrix, or with `consume`
    the Gram's own storage (a solve handed the Gram by `GramCollector.take` then holds one n x n
    matrix where it held two: 1.6 GB at 8B's FFN width). The same arithmetic either way."""
    H = gram.mul_(2) if consume else 2 * gram
    H.diagonal().add_(damp * float(H.diagonal().mean().clamp_min(1e-12)))
    return H


def weight64(ad, layer, role: str, device) -> torch.Tensor:
    """A copy of one role's weight in float64 on `device`: what OBS edits in place."""
    return ad.module(layer, role).weight.detach().to(device, torch.float64).clone()


def set_cost(W: torch.Tensor, Hinv: torch.Tensor, S: torch.Tensor, LS: torch.Tensor | None = None) -> float:
    """OBS cost tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ) of removing the columns S together (LS: the Cholesky
    factor of [H⁻¹]_SS, if the caller has it)."""
    LS = torch.linalg.cholesky(Hinv[S.unsqueeze(1), S.unsqueeze(0)]) if LS is None else LS
    WS = W[:, S]
    return float((WS * torch.cholesky_solve(WS.T, LS).T).sum())


def unit_costs(W: torch.Tensor, Hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """OBS cost tr(W_u [H⁻¹]_uu⁻¹ W_uᵀ) of removing each unit alone; `cols` is [U, g] column
    indices. Single columns (FFN channels): ‖W_:,j‖² / [H⁻¹]_jj, read off the diagonal with no
    gather and no factorisation (the batched form gathered all of W and factored U 1 x 1 blocks:
    0.66 s per step at 8,192 channels, about 100 steps per ladder layer). Wider units: `block_costs`."""
    if cols.shape[1] == 1:
        j = cols[:, 0]
        every = torch.equal(j, torch.arange(W.shape[1], device=j.device))
        d = Hinv.diagonal() if every else Hinv.diagonal()[j]
        if not bool((d > 0).all()):  # what the batched Cholesky refused: H⁻¹ is not positive definite
            raise torch.linalg.LinAlgError("H⁻¹ has a diagonal entry <= 0: the inputs' Gram is not positive definite")
        return (W.pow(2).sum(0) if every else W[:, j].pow(2).sum(0)) / d
    return block_costs(W, Hinv, cols)


def block_costs(W: torch.Tensor, Hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`unit_costs` for units of g columns: one batched Cholesky over the per-unit diagonal
    blocks (SlimGPT's grouped form)."""
    # Only the U diagonal blocks are gathered ([U, g, g]): gathering the whole (U·g)² block and
    # taking its diagonal cost 2.5 s per step at 8,192 channels (benchmarks/scale.py, issue 23).
    blocks = Hinv[cols.unsqueeze(2), cols.unsqueeze(1)]
    Wu = W[:, cols].permute(1, 0, 2)  # [U, out, g]
    sol = torch.cholesky_solve(Wu.transpose(1, 2), torch.linalg.cholesky(blocks))  # [U, g, out]
    return (Wu.transpose(1, 2) * sol).sum((1, 2))


def obs_compensate(W: torch.Tensor, Hinv: torch.Tensor, S: torch.Tensor) -> float:
    """Remove columns S of W (in place) with OBS compensation, downdate H⁻¹ (in place, no
    n x n temporary); returns tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ), twice the exact rise of ‖ΔW X‖²."""
    LS = torch.linalg.cholesky(Hinv[S.unsqueeze(1), S.unsqueeze(0)])
    HS = Hinv[S]  # [|S|, n]
    cost = set_cost(W, Hinv, S, LS)
    step = torch.cholesky_solve(HS, LS)
    W.addmm_(W[:, S], step, alpha=-1)
    Hinv.addmm_(HS.T, step, alpha=-1)
    W[:, S] = 0  # exact zeros (rounding leaves residue)
    return cost


def shrink_(M: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor) -> torch.Tensor:
    """M[rows][:, cols] (rows None: all) written into M's own storage, returned as a view of it.
    Row j of the result lands before any row not yet read (rows ascending), so rows move
    block by block through one small temporary."""
    r = M.shape[0] if rows is None else len(rows)
    m = len(cols)
    if rows is not None and r > 1 and not bool((rows[1:] > rows[:-1]).all()):
        return M.index_select(0, rows).index_select(1, cols)  # rows out of order: in place would overwrite unread rows
    flat = M.view(-1)
    # two temporaries for the whole call, written with out= (a fresh block per step cost a page
    # fault per 4 KiB: about a million per FFN cut at 8,192 channels)
    picked = None if rows is None else M.new_empty((min(ROW_BLOCK, r), M.shape[1]))
    block = M.new_empty((min(ROW_BLOCK, r), m))
    for a in range(0, r, ROW_BLOCK):
        b = min(a + ROW_BLOCK, r)
        src = M[a:b] if rows is None else torch.index_select(M, 0, rows[a:b], out=picked[: b - a])
        torch.index_select(src, 1, cols, out=block[: b - a])  # gathered before anything is written over
        flat[a * m : b * m].copy_(block[: b - a].reshape(-1))
    return flat[: r * m].view(r, m)


def jump(W: torch.Tensor, H: torch.Tensor, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The OBS state after removing every column outside `keep` (ascending), in one step: W's kept
    columns compensated, W_K + W_R H_RK H_KK⁻¹ (the least-squares fit of W X on the kept inputs,
    which sequential OBS removal reaches exactly), and H_KK⁻¹. Consumes H (H_KK is inverted in
    its storage); costs one k x k inverse instead of an n x n one plus the sequential downdates.
    Off the CPU's in-place inverse, H's storage stays alive through the k x k inversion."""
    n = H.shape[0]
    K = torch.tensor(keep, dtype=torch.long, device=H.device)
    gone = torch.ones(n, dtype=torch.bool, device=H.device)
    gone[K] = False
    R = gone.nonzero().view(-1)
    if len(R) == 0:
        return W.clone(), inverse_spd(H)
    lift = W.new_zeros((W.shape[0], len(K)))  # W_R H_RK, in row blocks of H: no |R| x n temporary
    for a in range(0, len(R), ROW_BLOCK):
        rows = R[a : a + ROW_BLOCK]
        lift.addmm_(W.index_select(1, rows), H.index_select(0, rows).index_select(1, K))
    Hinv = inverse_spd(shrink_(H.contiguous(), K, K))
    Wk = W.index_select(1, K)
    Wk.addmm_(lift, Hinv)
    return Wk, Hinv


class OBSState:
    """W's columns and H⁻¹, restricted to the kept units after every removal (see above).
    Takes ownership of `Hinv` and of `W` (both are compacted in their own storage)."""

    def __init__(self, W: torch.Tensor, Hinv: torch.Tensor, units: torch.Tensor):
        self.g = units.shape[1]
        cols = units.reshape(-1)
        n = W.shape[1]
        if not torch.equal(cols.sort().values, torch.arange(n, device=cols.device)):  # a column outside
            # every unit (or in two) would be lost by the compaction
            raise ValueError("OBSState needs units that cover every column of W exactly once")
        if not torch.equal(cols, torch.arange(n, device=cols.device)):  # the units' columns first, in unit order
            W, Hinv = shrink_(W.contiguous(), None, cols), shrink_(Hinv.contiguous(), cols, cols)
        if not Hinv.is_contiguous():  # LAPACK's inverse comes column-major: for a symmetric matrix that is its transpose
            Hinv = Hinv.mT if Hinv.mT.is_contiguous() else Hinv.contiguous()
        self.W, self.Hinv = W if W.is_contiguous() else W.contiguous(), Hinv
        self.alive = list(range(units.shape[0]))  # original unit indices, ascending, in compact order

    def _pos(self) -> torch.Tensor:
        return torch.arange(len(self.alive) * self.g, device=self.W.device).view(-1, self.g)

    def costs(self) -> torch.Tensor:
        """Each kept unit's cost of removal alone (compact order)."""
        return unit_costs(self.W, self.Hinv, self._pos())

    def remove(self, picks: list[int]) -> float:
        """Remove the kept units at compact positions `picks` together; returns the OBS cost."""
        pos = self._pos()
        cost = obs_compensate(self.W, self.Hinv, pos[picks].reshape(-1))
        gone = set(picks)
        keep = pos[[j for j in range(len(self.alive)) if j not in gone]].reshape(-1)
        self.alive = [u for j, u in enumerate(self.alive) if j not in gone]
        self.W = shrink_(self.W, None, keep)
        self.Hinv = shrink_(self.Hinv, keep, keep)
        return cost

    def remove_cheapest(self, k: int) -> tuple[list[int], float]:
        """The k cheapest units (ties by position), removed together: (their indices, cost)."""
        pick = torch.argsort(self.costs(), stable=True)[:k].tolist()
        units = [self.alive[j] for j in pick]
        return units, self.remove(pick)

    def remove_steps(self, n_units: int, steps: list[int], costs: list[float] | None = None) -> list[int]:
        """`n_units` more units out, `steps[j]` at a time; returns their indices and appends each
        step's cost to `costs`. One unit is always kept, so fewer come back when `n_units` would
        remove them all (or the steps sum to less)."""
        removed: list[int] = []
        for k in steps:
            k = min(k, n_units - len(removed), len(self.alive) - 1)
            if k <= 0:
                break
            got, c = self.remove_cheapest(k)
            removed += got
            if costs is not None:
                costs.append(c)
        return removed


def obs_remove(W: torch.Tensor, Hinv: torch.Tensor, units: torch.Tensor, n_units: int, steps: list[int],
               costs: list[float] | None = None) -> list[int]:
    """Remove `n_units` units of columns from W (in place: the kept columns compensated, the
    removed ones zero) with OBS; consumes `Hinv`. Returns the removed units' indices (and
    appends each step's cost to `costs`). The full-width form, for callers that want W's shape
    kept; the methods take `OBSState`'s compact W directly."""
    state = OBSState(W.clone(), Hinv, units)
    removed = state.remove_steps(n_units, steps, costs)
    W[:, units.reshape(-1)] = 0
    W[:, units[state.alive].reshape(-1)] = state.W
    return removed


def dynamic_group_sizes(n: int, largest: int = 1024, smallest: int = 8) -> list[int]:
    """Group sizes shrinking from `largest` to `smallest` (then repeated) to remove n columns."""
    steps, left = [], n
    k = largest
    while left > 0:
        while k > smallest and k > left // 2:
            k //= 2
        take = min(max(k, smallest), left)
        steps.append(take)
        left -= take
    return steps
