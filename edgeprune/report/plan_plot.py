"""plan.png: what a plan did to each layer, module by module (query heads, KV heads, FFN
channels), dense width against kept width, removed and protected layers marked.

The kept widths come from the strongest source at hand: the pruned checkpoint's own per-layer
widths (what surgery really produced), else the widths the pipeline recorded in the plan
(`plan.stats["widths"]`, every method), else the plan's kept-index lists against the dense
widths. A width that cannot be known is drawn as unknown, never as "kept everything".
"""
from __future__ import annotations

from ..models import LayerShape
from ..plan import Plan

MODULES = (("num_attention_heads", "query heads"), ("num_key_value_heads", "KV heads"),
           ("intermediate_size", "FFN channels"))
WIDTHS = "widths"  # plan.stats key: {"dense": [shape dict per layer], "kept": [shape dict or None per layer]}


def record_widths(plan: Plan, adapter) -> None:
    """Record every layer's dense and kept widths in the plan (called by the pipeline for every
    method, so no method has to remember it)."""
    removed = set(plan.removed_layers)
    plan.stats[WIDTHS] = {"dense": [s.as_dict() for s in adapter.layer_shapes()],
                          "kept": [None if i in removed else plan.result_shape(i, adapter).as_dict()
                                   for i in range(plan.num_layers)]}


def _as_dict(s) -> dict | None:
    return s.as_dict() if isinstance(s, LayerShape) else s


def plan_widths(plan: Plan, dense_shapes: list | None = None, kept_shapes: list | None = None) -> list[dict]:
    """Per layer: {layer, removed, protected, dense, kept, source}; `dense`/`kept` map each of
    `MODULES`' keys to a width (None where unknown). `kept_shapes` lists the pruned model's
    layers in order (removed layers absent), as its config holds them."""
    rec = plan.stats.get(WIDTHS) or {}
    dense = [_as_dict(s) for s in dense_shapes] if dense_shapes else rec.get("dense")
    removed, protected = set(plan.removed_layers), set((plan.options or {}).get("protect") or [])
    kept_layers = plan.kept_layers()
    if kept_shapes is not None and len(kept_shapes) != len(kept_layers):
        raise ValueError(f"the pruned model has {len(kept_shapes)} layers but the plan keeps {len(kept_layers)}")
    from_ckpt = dict(zip(kept_layers, map(_as_dict, kept_shapes))) if kept_shapes is not None else {}
    rows = []
    for i in range(plan.num_layers):
        d = dense[i] if dense else None
        if i in removed:
            kept, source = None, "plan"
        elif i in from_ckpt:
            kept, source = from_ckpt[i], "checkpoint"
        elif rec.get("kept"):
            kept, source = rec["kept"][i], "plan"
        elif d:
            kept, source = _from_keep_lists(plan, i, LayerShape.from_dict(d)), "plan"
        else:
            kept, source = None, "unknown"
        rows.append({"layer": i, "removed": i in removed, "protected": i in protected, "dense": d, "kept": kept,
                     "source": source})
    return rows


def _from_keep_lists(plan: Plan, i: int, shape: LayerShape) -> dict:
    """Kept widths from the plan's kept-index lists (a plan written before widths were recorded)."""
    kv, heads = plan.ordered_heads(i, shape)
    ffn = plan.layer(i).ffn_keep
    return LayerShape(len(ffn) if ffn is not None else shape.intermediate_size, len(heads), len(kv)).as_dict()


def plot_plan(plan: Plan, path: str, dense_shapes: list | None = None, kept_shapes: list | None = None,
              title: str | None = None) -> list[dict]:  # long: three panels and their marks
    """Draw plan.png; returns the rows drawn (`plan_widths`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    rows = plan_widths(plan, dense_shapes, kept_shapes)
    idx = [r["layer"] for r in rows]
    n = len(rows)
    fig, axes = plt.subplots(1, 3, figsize=(max(11, 0.45 * n * 3 + 3), 4.2))
    for ax, (key, label) in zip(axes, MODULES):
        dense = [(r["dense"] or {}).get(key) for r in rows]
        top = max([x for x in dense if x] or [1])
        ax.bar(idx, [x or 0 for x in dense], 0.8, color="#e8e8e8", edgecolor="#707070", linewidth=1.0)
        kept = [0 if r["removed"] else (r["kept"] or {}).get(key) for r in rows]
        ax.bar(idx, [k or 0 for k in kept], 0.56, color="tab:green")
        for r, k, d in zip(rows, kept, dense):
            if r["removed"]:
                ax.bar(r["layer"], top, 0.8, color="none", edgecolor="tab:red", hatch="//", linewidth=1.2)
                ax.text(r["layer"], top * 0.5, "removed", rotation=90, ha="center", va="center", color="tab:red", fontsize=8)
            elif k is None:
                ax.text(r["layer"], top * 0.5, "unknown", rotation=90, ha="center", va="center", fontsize=8)
            elif n <= 16:  # above both bars, never across the dense outline
                ax.text(r["layer"], max(k, d or 0) + top * 0.02, f"{k}" if k == d else f"{k}/{d}", ha="center",
                        va="bottom", fontsize=7)
            if r["protected"]:
                ax.text(r["layer"], top * 1.1, "P", ha="center", va="bottom", color="tab:purple", fontsize=9,
                        fontweight="bold")
        kept_sum = sum(k or 0 for k in kept)
        ax.set_title(f"{label}: {kept_sum:,} of {sum(x or 0 for x in dense):,} kept", fontsize=9)
        ax.set_xticks(idx, [str(i) for i in idx], fontsize=7 if n > 24 else 8)
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_ylim(0, top * 1.22)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.set_xlabel("layer")
    axes[0].set_ylabel("width (count)")
    handles = [Patch(facecolor="#e8e8e8", edgecolor="#707070", label="dense width"),
               Patch(facecolor="tab:green", label="kept width (label: kept/dense)"),
               Patch(facecolor="white", edgecolor="tab:red", hatch="//", label="layer removed")][:3 if plan.removed_layers else 2]
    if any(r["protected"] for r in rows):
        handles.append(Patch(facecolor="white", edgecolor="tab:purple", label="P: protected (never pruned)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    ratio = (plan.stats.get("report") or {}).get("ratio_achieved")
    head = f"plan: {plan.method}" + (f", {ratio:.1%} of non-embedding parameters removed" if ratio is not None else "")
    marks = f"{_listed(sorted(plan.removed_layers), 'removed')}; {_listed([r['layer'] for r in rows if r['protected']], 'protected')}"
    fig.suptitle(f"{head}; {marks}" + (f"\n{title}" if title else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return rows


def _listed(layers: list[int], what: str) -> str:
    """"no layer removed", "layer 2 removed", "layers 1, 3 removed": a bare "layers removed: 2"
    reads as a count."""
    if not layers:
        return f"no layer {what}"
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))} {what}"
