"""Device latency estimate with a per-token overhead term and an error bar.

Decode on a target is modelled as `overhead + bytes_read / bandwidth` per token: every
linear weight plus the KV cache is read once per token, and a fixed per-token cost (graph
walk, kernel launches, small ops, sampling) that dominates small models. Bandwidth-only
estimates were 50x too fast for small models, so the overhead is measured:

1. on the build host, the host's read bandwidth is measured (a streaming sum over 256 MB);
2. the overhead is what the host's measured decode time leaves after `bytes / bandwidth`,
   fitted on the dense artifact and, separately, on the pruned one;
3. the model's error is the cross-prediction error: the dense fit predicts the pruned
   measurement and vice versa. That is the error bar the estimate carries;
4. the overhead is scaled to the target by the CPU clock ratio from its TOML
   (`hardware.cpu_clock_ghz`; left unscaled, and said so, if absent). `hardware.cpu_cores`
   is recorded but does not divide the overhead: that cost is per-operator dispatch, which
   is serial (more threads add synchronisation rather than share it).

Prefill is `tokens x 2 FLOP per weight / peak + one overhead`, so a tiny model never gets
a prefill rate of millions of tokens/s without the overhead that bounds it.
"""
from __future__ import annotations

from pathlib import Path

BANDWIDTH_BYTES = 256 * 2**20


_PROBE = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
x = torch.ones(int(sys.argv[2]) // 4, dtype=torch.float32)
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter(); x.sum(); best = min(best, time.perf_counter() - t0)
print(int(sys.argv[2]) / best)
"""


def host_bandwidth(threads: int) -> float:
    """Bytes/s the host reads with `threads` threads (best of 5 streaming sums over 256 MB),
    measured in a child process so the probe's buffer never counts in our memory peak."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _PROBE, str(max(1, threads)), str(BANDWIDTH_BYTES)],
                       capture_output=True, text=True, timeout=120, check=True)
    return float(r.stdout.strip())


def host_clock_ghz() -> float | None:
    """The host CPU's clock from /proc/cpuinfo (the first core's current MHz), if known."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000
    except (OSError, ValueError):
        pass
    return None


def fit_overhead(ms: dict[str, float], read: dict[str, int], bandwidth: float) -> dict:
    """Per-token overhead (ms) from the host's measured decode of dense and pruned, and the
    cross-prediction error of `overhead + bytes / bandwidth`."""
    over = {k: max(0.0, ms[k] - read[k] / bandwidth * 1000) for k in ms}
    errors = []
    for fit, other in (("dense", "pruned"), ("pruned", "dense")):
        pred = over[fit] + read[other] / bandwidth * 1000
        errors.append(abs(pred - ms[other]) / ms[other])
    return {"overhead_ms": sum(over.values()) / len(over), "overhead_ms_by_fit": over,
            "relative_error": max(errors), "host_bandwidth_gb_s": bandwidth / 1e9}


def overhead_scale(target, host_threads: int, host_clock: float | None) -> tuple[float, str]:
    """Host-to-target factor for the overhead: the clock ratio. The core count is not a
    divisor: the per-token overhead is per-operator dispatch, which runs serially (more
    threads add synchronisation to it rather than share it)."""
    clock, cores = target.get("hardware.cpu_clock_ghz"), target.get("hardware.cpu_cores")
    if not clock or not host_clock:
        return 1.0, "unscaled (the target TOML gives no cpu_clock_ghz, or the host clock is unknown)"
    f = host_clock / float(clock)
    return f, (f"x {f:.2f}: host {host_clock:.2f} GHz ({host_threads} thread(s)) against the target's "
               f"{float(clock):.2f} GHz; its {cores or '?'} cores do not divide it (per-operator dispatch is serial)")


def device_estimate(target, fmt: str, dtype: str, weights: dict[str, int], kv: dict[str, int],
                    flops_per_token: dict[str, float], host_fit: dict, scale: tuple[float, str]) -> dict:
    """Decode ms/token and prefill tokens/s on `target` for dense and pruned, each with the
    model's relative error (from the build host) as the error bar."""
    over = host_fit["overhead_ms"] * scale[0]
    err = host_fit["relative_error"]
    ctx = target.context
    out = {"format": fmt, "dtype": dtype, "label": f"ESTIMATE (±{err:.0%}, the model's error on the build host), not measured"}
    for side in ("dense", "pruned"):
        decode = over + (weights[side] + kv[side]) / target.bandwidth * 1000
        prefill_s = ctx * flops_per_token[side] / target.peak_flops + over / 1000
        out[f"decode_ms_per_token_{side}"] = decode
        out[f"decode_ms_per_token_{side}_interval"] = [decode * (1 - min(err, 0.99)), decode * (1 + err)]
        out[f"prefill_tokens_per_s_{side}"] = ctx / prefill_s
    out["overhead_ms_per_token"] = over
    out["overhead_share"] = over / out["decode_ms_per_token_pruned"]
    out["relative_error"] = err
    from exporters.formats import get as get_format

    out["assumptions"] = (f"decode = per-token overhead ({host_fit['overhead_ms']:.3f} ms on the build host, scaled "
                          f"{scale[1]}) + every linear weight and the KV cache at context {ctx} ({get_format(fmt).kv_bytes(dtype)} "
                          f"bytes per element, as its runtime keeps it) read once at "
                          f"spec bandwidth; prefill = 2 FLOP per weight per token at peak compute + one overhead")
    if out["overhead_share"] > 0.5:
        out["caveat"] = ("per-token overhead is most of this estimate: the figures depend on the runtime and "
                         "host-to-target scaling more than on the hardware's bandwidth; measure with edgeprune bench")
    return out
