"""The shared OBS math (edgeprune/methods/obs.py): the shrinking state removes exactly what the
full-matrix OBS removes, with the same compensated weights, and its in-place moves are exact."""
from __future__ import annotations

import pytest
import torch

from edgeprune.methods.obs import OBSState, block_costs, dynamic_group_sizes, hessian, jump, obs_remove, shrink_, unit_costs

torch.set_num_threads(1)


def reference_remove(W, Hinv, units, n_units, steps):
    """OBS over the whole matrices, never shrunk (the algorithm as SlimGPT writes it)."""
    alive, removed = list(range(units.shape[0])), []
    for k in steps:
        if len(removed) >= n_units:
            break
        k = min(k, n_units - len(removed), len(alive) - 1)
        cost = unit_costs(W, Hinv, units[alive])
        pick = torch.argsort(cost, stable=True)[:k].tolist()
        S = torch.cat([units[alive[i]] for i in pick])
        LS = torch.linalg.cholesky(Hinv[S.unsqueeze(1), S.unsqueeze(0)])
        HS = Hinv[S]
        W -= W[:, S] @ torch.cholesky_solve(HS, LS)
        Hinv -= HS.T @ torch.cholesky_solve(HS, LS)
        removed += [alive[i] for i in pick]
        gone = set(removed)
        alive = [u for u in alive if u not in gone]
        W[:, units[removed].reshape(-1)] = 0
    return removed


def problem(n: int, out: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3 * n, n, generator=g, dtype=torch.float64) * torch.rand(n, generator=g, dtype=torch.float64)
    X[:, : n // 4] += X[:, n // 4 : n // 2]  # correlated inputs: compensation matters
    return torch.randn(out, n, generator=g, dtype=torch.float64), hessian(X.T @ X, 0.01)


@pytest.mark.parametrize("g,n", [(1, 96), (4, 96), (1, 600)])  # 600: more rows than one block of the in-place moves
def test_the_shrinking_state_removes_what_full_matrix_obs_removes(g, n):
    W, H = problem(n, 20, seed=g)
    units = torch.arange(n).view(-1, g).flip(0)  # units in an order that is not the columns' order
    n_units, steps = n // g // 2, dynamic_group_sizes(n // g // 2, largest=64, smallest=1)
    W_ref = W.clone()
    ref = reference_remove(W_ref, torch.linalg.inv(H), units, n_units, steps)
    W_new = W.clone()
    got = obs_remove(W_new, torch.linalg.inv(H), units, n_units, steps)
    assert got == ref
    assert torch.allclose(W_new, W_ref, rtol=0, atol=1e-10 * float(W_ref.abs().max()))
    assert bool((W_new[:, units[got].reshape(-1)] == 0).all())


def test_the_state_keeps_only_the_kept_units_in_compact_order():
    W, H = problem(64, 12, seed=3)
    state = OBSState(W.clone(), torch.linalg.inv(H), torch.arange(64).view(-1, 1))
    costs: list[float] = []
    gone = state.remove_steps(40, [16, 16, 8], costs)
    assert len(costs) == 3 and len(gone) == 40 and state.alive == sorted(set(range(64)) - set(gone))
    assert state.W.shape == (12, 24) and state.Hinv.shape == (24, 24)
    # the shrunk H⁻¹ is the inverse of H on the kept channels, as OBS theory says
    keep = torch.tensor(state.alive)
    assert torch.allclose(state.Hinv, torch.linalg.inv(H[keep][:, keep]), rtol=1e-8, atol=1e-12)


def test_shrink_moves_rows_and_columns_exactly_in_place():
    M = torch.arange(300 * 300, dtype=torch.float64).view(300, 300)  # more rows than one block
    ref = M.clone()
    rows = torch.tensor(sorted({3 * i % 300 for i in range(200)}))
    cols = torch.tensor([0, 5, 7, 150, 299])
    small = shrink_(M, rows, cols)
    assert small.data_ptr() == M.data_ptr() and torch.equal(small, ref[rows][:, cols])
    W = ref[:40].clone()
    kept = shrink_(W, None, cols)
    assert kept.data_ptr() == W.data_ptr() and torch.equal(kept, ref[:40][:, cols])


def test_single_column_costs_are_the_batched_block_costs():
    W, H = problem(80, 10, seed=5)
    Hinv = torch.linalg.inv(H)
    for cols in (torch.arange(80).view(-1, 1), torch.tensor([[7], [3], [50]])):
        assert torch.allclose(unit_costs(W, Hinv, cols), block_costs(W, Hinv, cols), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_in_place_lapack_inverse_is_torch_s_inverse(dtype):
    """inverse_spd on the CPU (SciPy's potrf + potri in the matrix's own memory) gives torch's
    cholesky_inverse, symmetric, in the storage it was handed; a rank-deficient Gram takes the
    same escalating jitter as `_chol` (so the two agree there too)."""
    from edgeprune.methods.linalg import _chol, inverse_spd

    g = torch.Generator().manual_seed(3)
    for n, extra in ((1, 3), (7, 3), (700, 40), (600, -400)):  # the last one is rank-deficient
        X = torch.randn(n + extra, n, generator=g, dtype=torch.float64)
        G = (X.T @ X).to(dtype)
        want = torch.cholesky_inverse(_chol(G.clone())).double()  # the same dtype: the same jitter
        M = G.clone()
        got = inverse_spd(M)
        assert torch.equal(got, got.T) and bool(torch.isfinite(got).all())
        if extra < 0 and dtype == torch.float32:  # singular in float32: either factor's jitter is as good
            continue
        tol = 1e-8 if dtype == torch.float64 else 1e-3  # the jittered rank-deficient one is ill-conditioned
        assert float((got.double() - want).abs().max() / want.abs().max()) < tol
        if n > 1:
            assert got.data_ptr() == M.data_ptr()  # no second n x n matrix


def test_lapack_runs_at_torch_s_thread_count():
    """OpenBLAS would take every core whatever --threads said (two 1-thread ranks on all cores)."""
    from threadpoolctl import threadpool_info

    from edgeprune.methods.linalg import lapack_threads

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with lapack_threads():
            assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("n,removed", [(96, 40), (600, 150), (64, 0)])
def test_jump_reaches_the_state_sequential_obs_removal_reaches(n, removed):
    """`jump` (the re-fit's start from a ladder rung's channels) is the OBS state after removing
    the other columns one by one: the same compensated W and the same H⁻¹ of the kept columns."""
    from edgeprune.methods.linalg import inverse_spd

    W, H = problem(n, 24, seed=n)
    state = OBSState(W.clone(), inverse_spd(H.clone()), torch.arange(n).view(-1, 1))
    state.remove_steps(removed, dynamic_group_sizes(removed))
    Wj, Hj = jump(W, H.clone(), list(state.alive))
    assert Wj.shape == state.W.shape and Hj.shape == state.Hinv.shape
    assert torch.allclose(Wj, state.W, rtol=1e-9, atol=1e-9 * float(W.abs().max()))
    assert torch.allclose(Hj, state.Hinv, rtol=1e-9, atol=1e-9 * float(state.Hinv.abs().max()))
    # and it is the least-squares fit of W X on the kept inputs
    K = torch.tensor(state.alive)
    ls = W @ H[:, K] @ torch.linalg.inv(H[K][:, K])
    assert torch.allclose(Wj, ls, rtol=1e-8, atol=1e-8 * float(W.abs().max()))
