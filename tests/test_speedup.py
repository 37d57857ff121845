"""The speedup check's verdicts (pure arithmetic on per-repetition timings; no clock)."""
from __future__ import annotations

from edgeprune.measure.speedup import check, interval, verdict


def test_a_47x_speedup_against_an_ideal_of_1_23_is_inconclusive():
    dense = [439.0, 12.0, 11.5, 12.2, 11.9]   # one repetition hit by a busy core
    pruned = [9.3, 295.0, 9.4, 290.0, 9.2]
    res = check(dense, pruned, ideal=1.23)
    assert res["status"] == "inconclusive" and not res["passed"]


def test_clean_timings_pass_and_miss():
    dense = [10.0, 10.1, 9.9, 10.05, 10.0, 9.95, 10.1, 10.0]
    good = [d / 1.25 for d in dense]
    slow = [d / 1.02 for d in dense]
    assert check(dense, good, ideal=1.3)["status"] == "pass"
    assert check(dense, slow, ideal=1.3)["status"] == "miss"


def test_implausible_and_straddling_are_inconclusive():
    assert verdict(2.5, 2.4, 2.6, ideal=1.3)[0] == "inconclusive"      # > 1.5 x ideal
    assert verdict(0.5, 0.45, 0.55, ideal=1.3)[0] == "inconclusive"    # < 1 / ideal
    assert verdict(1.17, 1.10, 1.25, ideal=1.3)[0] == "inconclusive"   # straddles 0.9 x 1.3 = 1.17
    assert verdict(1.2, 0.8, 1.6, ideal=1.3)[0] == "inconclusive"      # too wide


def test_interval_contains_the_median_and_is_seeded():
    r = [1.1, 1.2, 1.15, 1.3, 1.18, 1.22]
    med, lo, hi = interval(r)
    assert lo <= med <= hi
    assert interval(r) == (med, lo, hi)


def test_a_speed_budget_is_checked_against_the_speedup_asked_for():
    """Under --speedup S the check holds the measurement to S, not the bytes ideal, which is kept."""
    from edgeprune.measure.speedup import check

    dense = [2.0, 2.02, 1.98, 2.01, 2.0, 1.99, 2.0]
    pruned = [d / 1.25 for d in dense]
    by_bytes = check(dense, pruned, ideal=1.6)  # 1.25x against 0.9 x 1.6 = 1.44: a miss
    asked = check(dense, pruned, ideal=1.6, requested=1.2)  # 1.25x against 0.9 x 1.2 = 1.08: a pass
    assert by_bytes["status"] == "miss" and asked["status"] == "pass"
    assert asked["bytes_ideal"] == 1.6 and asked["decode_ideal"] == 1.2 and asked["reference"] == "requested speedup"
    assert check(dense, [d / 1.0 for d in dense], ideal=1.6, requested=1.2)["status"] == "miss"


def test_a_speed_budget_passes_on_its_lower_bound_however_wide():
    from edgeprune.measure.speedup import verdict

    assert verdict(1.42, 1.30, 1.73, 1.2, ceiling=2.0, one_sided=True)[0] == "pass"
    assert verdict(1.42, 1.30, 1.73, 1.2, ceiling=2.0)[0] == "inconclusive"  # the bytes-ideal check: too wide
    assert verdict(1.09, 0.98, 1.19, 1.2, ceiling=2.0, one_sided=True)[0] == "inconclusive"  # straddles 1.08


def test_a_preempted_decode_step_does_not_move_the_per_token_figure():
    """One step in 32 taking 50x (the scheduler ran another process) leaves ms/token unchanged;
    the mean would have moved it by 150%."""
    from exporters.runtimes import decode_step

    steps = [1e-3] * 31 + [50e-3]
    assert decode_step(steps) == 1e-3
    assert decode_step([3e-3, 1e-3, 2e-3]) == 2e-3
    assert decode_step([1e-3, 2e-3]) == 1.5e-3
    import math
    assert math.isnan(decode_step([]))


def test_repetitions_rotate_which_artifact_runs_first(monkeypatch):
    """A position effect (the first run of a round is slower) must not always land on one artifact:
    with a 10% first-of-round penalty, a dense/pruned pair of equal speed measures 1.0x."""
    from edgeprune.measure import latency

    order: list[str] = []

    class Sess:
        runtime = "fake"

        def __init__(self, name):
            self.name = name

    monkeypatch.setattr(latency, "_session", lambda p, c, n, t: Sess(str(p)))

    def one_run(sess, ids, new_tokens):
        if new_tokens == 2:  # warm-up
            return 0.01, 0.001
        first = len(order) % 2 == 0
        order.append(sess.name)
        return 0.01, 0.0011 if first else 0.001

    monkeypatch.setattr(latency, "_one_run", one_run)
    res = latency.measure({"dense": "dense", "pruned": "pruned"}, context=8, new_tokens=4, reps=6, threads=1,
                          max_reps=6)
    assert order[:4] == ["dense", "pruned", "pruned", "dense"]
    d, p = res["dense"]["decode_ms_per_token_runs"], res["pruned"]["decode_ms_per_token_runs"]
    assert len(d) == len(p) == 6 and sum(d) == sum(p)
