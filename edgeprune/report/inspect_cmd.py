"""`edgeprune inspect`: architecture, parameters and per-layer widths of a model or plan."""
from __future__ import annotations

from pathlib import Path

from ..plan import PLAN_JSON, Plan
from .plan_plot import plan_widths, plot_plan


def _plan_rows(plan: Plan) -> list[dict]:
    """Per layer: the method's own statistics and the kept widths (`plan_plot.plan_widths`)."""
    rows = []
    imp = plan.stats.get("layer_importance", {})
    widths = plan_widths(plan)
    for i in range(plan.num_layers):
        lp = plan.layers.get(i)
        st = lp.stats if lp else {}
        rows.append({
            "layer": i, "removed": i in plan.removed_layers, "importance": imp.get(str(i), st.get("importance")),
            "target_ratio": st.get("target_ratio"), "achieved_ratio": st.get("achieved_ratio"), "tau": st.get("tau"),
            "o_mask_var": st.get("o_mask_var"), "down_mask_var": st.get("down_mask_var"), "kept": widths[i]["kept"] or st.get("kept"),
            "dense": widths[i]["dense"],
        })
    return rows


def _check_plot(plot: str | None) -> None:
    """--plot names the PNG to write: a directory, or a missing parent, is refused before work."""
    from ..errors import OutputError

    if plot is None:
        return
    q = Path(plot)
    if q.is_dir() or str(plot).endswith(("/", "\\")):
        raise OutputError(f"--plot {plot} is a directory; give the PNG's file name, e.g. {q / 'plan.png'}")
    if not q.absolute().parent.is_dir():
        raise OutputError(f"--plot {plot}: directory {q.absolute().parent} does not exist; create it first")


def inspect_path(path: str, plot: str | None = None) -> dict:
    """A model directory, a plan, a build directory, a `.gguf` file or an ONNX folder."""
    from . import inspect_artifacts as ia

    p = Path(path)
    _check_plot(plot)
    kind = ia.kind_of(p)
    if kind not in (None, "build"):
        from exporters.formats import get

        return get(kind).inspect(p)
    if kind == "build":
        return ia.inspect_build(p, lambda m: inspect_path(m, plot))
    if p.is_file() and p.name.endswith(".json") or (p.is_dir() and (p / PLAN_JSON).is_file() and not (p / "config.json").is_file()):
        plan = Plan.load(p)
        rows = _plan_rows(plan)
        text = [f"plan: method {plan.method}, {plan.model_type}, {plan.num_layers} layers, removed {plan.removed_layers}"]
        for r in rows:
            text.append(f"  layer {r['layer']:>3} {'REMOVED' if r['removed'] else ''} importance={_f(r['importance'])} "
                        f"target={_f(r['target_ratio'])} achieved={_f(r['achieved_ratio'])} tau={_f(r['tau'])} kept={r['kept']}")
        if plot:
            plot_plan(plan, plot, title=f"edgeprune inspect {p}")
        return {"kind": "plan", "plan": plan.to_dict(), "layers": rows, "text": "\n".join(text)}
    from ..io.checkpoint import load_config
    from ..models import expected_nonembedding, get_adapter

    cfg = load_config(p)
    ad = get_adapter(cfg)
    shapes = ad.layer_shapes()
    non_emb = expected_nonembedding(ad, shapes)
    emb = ad.embedding_params()
    layers = [{"layer": i, **s.as_dict(), "params": ad.layer_param_count(s)} for i, s in enumerate(shapes)]
    text = [f"{ad.family}: {len(shapes)} layers, hidden {ad.hidden_size}, head_dim {ad.head_dim}, vocab {ad.vocab_size}",
            f"parameters: {non_emb + emb:,} total, {non_emb:,} non-embedding"]
    for r in layers:
        text.append(f"  layer {r['layer']:>3}: ffn {r['intermediate_size']:>6}  heads {r['num_attention_heads']:>3}  "
                    f"kv {r['num_key_value_heads']:>3}  params {r['params']:,}"
                    + (f"  added bias: {','.join(r['added_bias'])}" if r.get("added_bias") else ""))
    out = {"kind": "model", "family": ad.family, "params_total": non_emb + emb, "params_nonembedding": non_emb,
           "layers": layers, "text": "\n".join(text)}
    if (p / PLAN_JSON).is_file():
        plan = Plan.load(p)
        out["plan"] = {"method": plan.method, "removed_layers": plan.removed_layers, "layers": _plan_rows(plan)}
        out["text"] += f"\nplan: {plan.method}, removed layers {plan.removed_layers}"
        if plot:  # the checkpoint's own widths are the kept ones
            plot_plan(plan, plot, kept_shapes=shapes, title=f"edgeprune inspect {p}")
    return out


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


