"""The verdict: GO, NO-GO or UNCERTAIN for each artifact, from speed, quality and fit.

A report that lists numbers leaves the decision to the reader; this module takes it, with the
reasons, so that report.md can open with one line per artifact. No torch: `bench` re-decides
on the device with the measurement it just made.

- speed: the speedup check's status (`speedup.py`), from the newest measurement of the pair
  (the last `edgeprune bench` of the build if it measured this artifact, else the build's):
  pass, or a whole 95% interval above 1x -> GO; bigger pruned artifact, measurably slower, or
  a miss with no measurable speedup -> NO-GO; otherwise UNCERTAIN (`speed_decision`);
- quality: pruned/dense perplexity through the artifact's runtime against the target's
  `quality.max_ppl_ratio` (`target_keys.DEFAULT_MAX_PPL_RATIO` unless declared): above it, or a
  sample generation that is garbage (`garbage`), raises the quality alarm -> NO-GO; a ratio
  under the bar whose 95% interval reaches over it -> UNCERTAIN;
- fit: artifact bytes + the KV cache at the target's context against the target's memory
  budget; over it -> NO-GO.
NO-GO wins over UNCERTAIN, which wins over GO.

profile.json `verdict` section (schema version 1, additive; every field is written):
  decided_by      "build", or "bench on <cpu> at <time>" after `edgeprune bench` re-decided
  max_ppl_ratio   the target's quality bar
  quality_alarm   true when any artifact's quality is an alarm
  alarms          one line per alarm (also printed on the build's stderr)
  summary         the paragraph report.md prints under the verdict lines
  artifacts[i]    format, dtype, decision ("GO" | "NO-GO" | "UNCERTAIN"), reasons (why not GO),
    speed    {status, measured, interval, ideal, source ("build" | "bench"), measured_on (null: the
              build host), build_host (true when measured on the build host, by the build or by bench)}
    quality  {status ("ok" | "alarm" | "uncertain"), ppl_dense, ppl_pruned, ppl_ratio,
              ppl_ratio_interval (95% bootstrap over the evaluation windows, or null), max_ppl_ratio,
              garbage: [{prompt, why}]}
    fit      {fits, artifact_bytes, kv_cache_bytes (null if unknown), kv_context, total_bytes, budget_bytes}
"""
from __future__ import annotations

GO, NO_GO, UNCERTAIN = "GO", "NO-GO", "UNCERTAIN"
_RANK = {GO: 0, UNCERTAIN: 1, NO_GO: 2}
GARBAGE_UNPRINTABLE = 0.3  # fraction of a sample's characters that are U+FFFD or control characters
GARBAGE_MIN_TOKENS = 6  # a sample this long made of at most two distinct tokens is a loop


def human_bytes(n: float | None) -> str:
    """Bytes in the unit a person reads (decimal, three significant digits): 842 kB, 1.58 MB, 8 GB."""
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def samples_of(pruned_verify: dict, dense_verify: dict | None) -> list[dict]:
    """The verify text path's completions of the same prompts by the dense and the pruned
    artifact, each through its own runtime (llama.cpp, or ORT GenAI for an ONNX folder): no
    generation is run again for the report."""
    from exporters.text_path import in_report

    def runs(v: dict | None) -> tuple[str | None, list[dict]]:
        for who, tp in in_report(v):
            if tp and "generation" in tp:
                return who, tp["generation"]["runs"]
        return None, []

    who, pruned = runs(pruned_verify)
    dense = {r["prompt"]: r for r in runs(dense_verify)[1]}
    return [{"prompt": r["prompt"], "runtime": who, "pruned": r["runtime_text"], "pruned_ids": r["runtime_new_ids"],
             "dense": dense.get(r["prompt"], {}).get("runtime_text"), "dense_ids": dense.get(r["prompt"], {}).get("runtime_new_ids")}
            for r in pruned]


def garbage(text: str, ids: list[int], dense_ids: list[int] | None = None) -> str | None:
    """Why a sample generation reads as garbage, or None. A heuristic on a few tokens, so it is
    kept to what is unmistakable: mostly unprintable characters, or a loop over one or two tokens
    where the dense model did not loop itself (a tiny dense model may repeat, and then so may its
    pruned copy)."""
    if text:
        bad = sum(1 for c in text if c == "\ufffd" or (not c.isprintable() and c not in "\n\t"))
        if bad / len(text) > GARBAGE_UNPRINTABLE:
            return f"{bad} of its {len(text)} characters are unprintable or invalid UTF-8"
    if len(ids) >= GARBAGE_MIN_TOKENS and len(set(ids)) <= 2 and (dense_ids is None or len(set(dense_ids)) > 2):
        return f"a loop of {len(set(ids))} distinct token(s) over {len(ids)}, where the dense model does not loop"
    return None


def fit_of(artifact_bytes: int, kv_bytes: int | None, context: int, budget: int) -> dict:
    total = artifact_bytes + (kv_bytes or 0)
    return {"fits": total <= budget, "artifact_bytes": artifact_bytes, "kv_cache_bytes": kv_bytes, "kv_context": context,
            "total_bytes": total, "budget_bytes": budget}


def quality_of(ppl: dict, max_ratio: float, samples: list[dict]) -> dict:
    ratio, iv = ppl.get("ratio"), ppl.get("ratio_interval")
    junk = [{"prompt": s["prompt"], "why": why} for s in samples
            if (why := garbage(s.get("pruned") or "", s.get("pruned_ids") or [], s.get("dense_ids")))]
    if ratio is None:
        status = "uncertain"
    elif ratio > max_ratio or junk:
        status = "alarm"
    elif iv and iv[1] > max_ratio:
        status = "uncertain"
    else:
        status = "ok"
    return {"status": status, "ppl_dense": ppl.get("dense"), "ppl_pruned": ppl.get("pruned"), "ppl_ratio": ratio,
            "ppl_ratio_interval": iv, "max_ppl_ratio": max_ratio, "garbage": junk}


def speed_of(artifact: dict, bench: list[dict]) -> dict:
    """The newest speedup check of this artifact: the last bench record that measured it, else the build's."""
    for rec in reversed(bench):
        for m in rec.get("artifacts", []):
            if (m["format"], m["dtype"]) == (artifact["format"], artifact["dtype"]) and m.get("speedup"):
                same = bool(rec.get("same_host_as_build"))
                return _speed(m["speedup"], "bench", f"{rec['host']['cpu']} (edgeprune bench"
                              + (" on the build host" if same else "") + f", {rec['time']})", same)
    return _speed(artifact["speedup"], "build", None, True)


def _speed(sp: dict, source: str, where: str | None, build_host: bool) -> dict:
    return {"status": sp.get("status"), "measured": sp.get("decode_measured"), "interval": sp.get("decode_interval"),
            "ideal": sp.get("decode_ideal"), "source": source, "measured_on": where, "build_host": build_host}


def decide_one(speed: dict, quality: dict, fit: dict) -> tuple[str, list[str]]:
    """(decision, reasons): every reason it is not GO, the deciding ones (NO-GO) first."""
    out: list[tuple[str, str]] = []
    if not fit["fits"]:
        out.append((NO_GO, f"does not fit: {human_bytes(fit['total_bytes'])} over the {human_bytes(fit['budget_bytes'])} budget"))
    q = quality
    if q["status"] == "alarm":
        why = ([f"perplexity x{q['ppl_ratio']:.2f} the dense model's, over the x{q['max_ppl_ratio']:g} bar"]
               if q["ppl_ratio"] is not None and q["ppl_ratio"] > q["max_ppl_ratio"] else [])
        why += [f"garbage text for {g['prompt']!r}: {g['why']}" for g in q["garbage"]]
        out.append((NO_GO, "quality alarm: " + "; ".join(why)))
    elif q["status"] == "uncertain":
        out.append((UNCERTAIN, "quality uncertain: " + (
            "no perplexity measured" if q["ppl_ratio"] is None else
            f"perplexity x{q['ppl_ratio']:.2f}, but its 95% interval reaches x{q['ppl_ratio_interval'][1]:.2f}, "
            f"over the x{q['max_ppl_ratio']:g} bar")))
    level, why = speed_decision(speed)
    if level != GO:
        out.append((level, why))
    out.sort(key=lambda r: -_RANK[r[0]])
    return (out[0][0] if out else GO), [r for _, r in out]


def speed_decision(s: dict) -> tuple[str, str | None]:
    """Speed's part of the verdict, from the check's status and its interval. The check asks
    "did it reach 0.9 x the ideal?"; a person asks "is it faster?". So a miss or a too-wide
    interval whose whole 95% interval is above 1x is still GO (measurably faster, short of
    the ideal); an artifact that reads more bytes (ideal < 1), is measurably slower, or missed
    with no measurable speedup is NO-GO; an implausible or noisy one that may not be faster is
    UNCERTAIN."""
    from ..measure.speedup import IMPLAUSIBLE_ABOVE

    st, m, ideal = s.get("status"), s.get("measured"), s.get("ideal")
    if m is None or ideal is None:
        return UNCERTAIN, "speed not measured"
    lo, hi = s.get("interval") or [m, m]
    words = _speed_words(s)
    if ideal < 1:
        return NO_GO, f"not faster: the pruned artifact reads more bytes per token than the dense one ({words})"
    if m > IMPLAUSIBLE_ABOVE * ideal or m < 1 / ideal:
        return UNCERTAIN, f"speed not established: an implausible measurement, the machine was busy ({words})"
    if st == "pass" or lo > 1:
        return GO, None
    if hi < 1:
        return NO_GO, f"slower than the dense artifact ({words})"
    if st == "miss":
        return NO_GO, f"not measurably faster: the speedup check missed ({words})"
    return UNCERTAIN, f"speed not established: the speedup check is {st or 'missing'} ({words})"


def _speed_words(s: dict) -> str:
    iv = s.get("interval") or [s.get("measured")] * 2
    if s.get("measured") is None:
        return "no measurement"
    by = "edgeprune bench" if s.get("source") == "bench" else "the build"
    where = "the build host" if s.get("build_host", True) else "the device"
    return f"{s['measured']:.2f}x [{iv[0]:.2f}, {iv[1]:.2f}] against an ideal of {s['ideal']:.2f}x, by {by} on {where}"


def decide(profile: dict, kv_bytes: dict[str, int | None] | None = None, decided_by: str = "build") -> dict:
    """The `verdict` section for a profile. `kv_bytes` ("format dtype" -> KV-cache bytes at the
    target's context) comes from the build, which knows the widths; without it (bench) the fit
    already recorded in the profile's previous verdict is kept."""
    from ..run.target_keys import value

    tgt = profile["target"]
    max_ratio = value(tgt, "quality.max_ppl_ratio")
    old = {(a["format"], a["dtype"]): a for a in (profile.get("verdict") or {}).get("artifacts", [])}
    budget, context = value(tgt, "memory.budget_bytes"), value(tgt, "latency.context")
    rows, alarms = [], []
    for a in profile["artifacts"]:
        key = f"{a['format']} {a['dtype']}"
        kv = (kv_bytes or {}).get(key, ((old.get((a["format"], a["dtype"])) or {}).get("fit") or {}).get("kv_cache_bytes"))
        fit = fit_of(a["bytes"], kv, context, budget)
        quality = quality_of(a["perplexity"], max_ratio, a.get("samples") or [])
        speed = speed_of(a, profile.get("measured_on_device") or [])
        decision, reasons = decide_one(speed, quality, fit)
        rows.append({"format": a["format"], "dtype": a["dtype"], "decision": decision, "reasons": reasons,
                     "speed": speed, "quality": quality, "fit": fit})
        if quality["status"] == "alarm":
            alarms.append(f"QUALITY ALARM: {key}: " + next(r for r in reasons if r.startswith("quality alarm"))
                          .removeprefix("quality alarm: "))
    section = {"decided_by": decided_by, "max_ppl_ratio": max_ratio, "quality_alarm": bool(alarms), "alarms": alarms,
               "artifacts": rows}
    section["summary"] = summary(section, profile)
    return section


def summary(v: dict, profile: dict) -> str:
    """The short paragraph under the verdict lines: what was decided where, and what to do next."""
    rows = v["artifacts"]
    go = [f"{r['format']} {r['dtype']}" for r in rows if r["decision"] == GO]
    where = {r["speed"]["measured_on"] or f"the build host ({profile['provenance']['host']['cpu']})" for r in rows}
    text = [f"{len(go)} of {len(rows)} artifacts are GO" + (f" ({', '.join(go)})" if go else "")
            + f"; speed was measured on {' and '.join(sorted(where))}."]
    if any(r["speed"].get("build_host", r["speed"]["source"] == "build") for r in rows):
        text.append(f"Those timings come from the build host, not from a {profile['target']['name']} device: run "
                    "`edgeprune bench <build dir>` on the device itself; it re-measures every pair and re-decides "
                    "this verdict.")
    if v["quality_alarm"]:
        text.append(f"Quality is past the target's bar (perplexity at most x{v['max_ppl_ratio']:g} the dense model's): "
                    "prune less (a lower --ratio) or choose a wider dtype, and read the samples below.")
    if any(r["speed"]["status"] == "miss" for r in rows):
        text.append("Where a speedup falls short of the ideal, per-token overhead rather than weight reads dominates "
                    "decode time on a model this small; wider layers gain more.")
    if any(not r["fit"]["fits"] for r in rows):
        text.append("An artifact over the memory budget needs a higher ratio or a smaller dtype.")
    return " ".join(text)


def refresh(profile: dict, decided_by: str) -> dict:
    """Re-decide after `bench` appended a measurement (fit and samples as the build recorded them)."""
    profile["verdict"] = decide(profile, None, decided_by)
    return profile["verdict"]


def verdict_lines(profile: dict) -> list[str]:
    """report.md's opening: one line per artifact, any alarm, then the paragraph."""
    v = profile.get("verdict")
    if not v:
        return []
    out = []
    for r in v["artifacts"]:
        s, q, f = r["speed"], r["quality"], r["fit"]
        iv = s.get("interval") or [s.get("measured")] * 2
        word = {GO: "faster", NO_GO: "NOT faster", UNCERTAIN: "uncertain"}[speed_decision(s)[0]]
        speed = (f"speed {word}, {s['measured']:.2f}x [{iv[0]:.2f}, {iv[1]:.2f}] (check {s['status']}, ideal "
                 f"{s['ideal']:.2f}x; {'edgeprune bench' if s['source'] == 'bench' else 'build host'})"
                 if s.get("measured") is not None else "speed not measured")
        qiv = q.get("ppl_ratio_interval")
        quality = (f"quality {'ALARM' if q['status'] == 'alarm' else q['status']}, "
                   + ("no perplexity" if q["ppl_ratio"] is None else f"PPL x{q['ppl_ratio']:.3f}")
                   + (f" [{qiv[0]:.3f}, {qiv[1]:.3f}]" if qiv else "") + f" (bar x{q['max_ppl_ratio']:g})"
                   + "".join(f", garbage text for {g['prompt']!r}" for g in q["garbage"]))
        kv = (f" + {human_bytes(f['kv_cache_bytes'])} KV at {f['kv_context']} tokens" if f["kv_cache_bytes"] is not None
              else " (KV cache unknown)")
        fit = f"fit {'ok' if f['fits'] else 'OVER'}, {human_bytes(f['artifact_bytes'])}{kv} of {human_bytes(f['budget_bytes'])}"
        out.append(f"- **{r['decision']}** {r['format']} {r['dtype']}: {quality}; {speed}; {fit}")
    out.append("")
    for a in v["alarms"]:  # one quote each: consecutive quote lines would run into one paragraph
        out += [f"> **{a.split(':', 1)[0]}**:{a.split(':', 1)[1]}", ""]
    return out + [v["summary"], ""]


def samples_lines(profile: dict) -> list[str]:
    """The sample generations, dense vs pruned, of each artifact through its runtime."""
    out = []
    for a in profile["artifacts"]:
        ss = a.get("samples") or []
        if not ss:
            continue
        out += ["", f"**{a['format']} {a['dtype']}** through {ss[0]['runtime']} (greedy):", "",
                "| prompt | dense | pruned |", "|---|---|---|"]
        out += [f"| {_cell(s['prompt'])} | {_cell(s['dense'])} | {_cell(s['pruned'])} |" for s in ss]
    return (["## Sample generations", "", "The same prompts, greedy, through each artifact's own runtime and tokenizer "
             "(the verification's text path: no generation is run again for the report)."] + out + [""]) if out else []


def _cell(text: str | None) -> str:
    if text is None:
        return "-"
    return "`" + text.replace("\n", "\\n").replace("|", "\\|").replace("`", "'") + "`"
