"""Where a cut lands on real widths: kept widths rounded to --align, KV groups that keep the
attention width aligned, and the uniform methods' split of a layer's budget between attention
and FFN. Shape arithmetic only (no torch), so the budget module and every method read it.
"""
from __future__ import annotations

from ..models import DecoderAdapter, LayerShape

# Deeper than this a module is better dropped with its layer: search's ladders stop here, and the
# speed budget's reachable range is computed from the same deepest cut (measure/budget.py).
MAX_MODULE_CUT = 0.875


def aligned_keep(full: int, keep: int, align: int) -> tuple[int, str | None]:
    """Round a kept width to a multiple of `align`; explain when that makes no sense."""
    if align <= 1:
        return keep, None
    if full < 2 * align:
        return keep, f"width {full} is too small for --align {align}; left unaligned"
    k = max(align, int(round(keep / align)) * align)
    return min(k, full), None


def aligned_groups(shape: LayerShape, g: int, group_width: int, align: int) -> int:
    """The number of KV groups to remove nearest to `g` that leaves the attention width
    (kept query heads x head_dim) a multiple of `align` (k-quants need rows of 256), when
    the dense width allows one; otherwise `g` unchanged."""
    if align <= 1:
        return g
    ok = [k for k in range(shape.num_kv_heads) if ((shape.num_kv_heads - k) * group_width) % align == 0]
    return min(ok, key=lambda k: (abs(k - g), k)) if ok else g


def uniform_split(adapter: DecoderAdapter, shape: LayerShape, target: float, align: int) -> tuple[int, int]:
    """(KV groups, FFN channels) to remove for `target` params: attention at the same
    fraction as the layer, rounded to whole groups (keeping one), FFN taking the rest."""
    n_rep = shape.num_heads // shape.num_kv_heads
    per_group = adapter.head_group_param_count(n_rep)
    per_ch = adapter.ffn_channel_param_count()
    layer = adapter.layer_param_count(shape)
    frac = target / layer
    g = min(shape.num_kv_heads - 1, int(round(frac * shape.num_kv_heads)))
    g = aligned_groups(shape, g, n_rep * adapter.head_dim, align)
    rest = target - g * per_group
    c = int(round(rest / per_ch))
    c = max(0, min(shape.intermediate_size - 1, c))
    keep, _ = aligned_keep(shape.intermediate_size, shape.intermediate_size - c, align)
    return g, shape.intermediate_size - keep
