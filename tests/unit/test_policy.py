"""Closed-loop decisions: retrain cool-down, production gate, post-promotion watch, shadow verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mnistops.controller.policy import PromotionWatch, RetrainPolicy
from mnistops.controller.verdict import ShadowVerdict
from mnistops.gates.stats import mcnemar, wilson_upper
from mnistops.worker.steps import ProductionGateConfig, decide_production_gate


@dataclass
class Alert:
    rule: str
    started_at: float


# --- McNemar / production gate -------------------------------------------------------------------
def test_mcnemar_counts_discordant_pairs_only() -> None:
    ref = np.array([1, 1, 0, 0, 1, 0], bool)
    new = np.array([1, 0, 1, 1, 1, 0], bool)
    t = mcnemar(ref, new)
    assert (t.b, t.c) == (1, 2)
    assert t.p_value == pytest.approx(0.5)  # P(X >= 2 | n=3, 1/2) = 4/8
    assert mcnemar(ref, ref).p_value == 1.0  # no discordant pairs: no evidence


def test_mcnemar_two_sided_is_the_release_gate_test() -> None:
    ref = np.array([1] * 10 + [0] * 2, bool)
    new = np.array([0] * 10 + [1] * 2, bool)  # b=10, c=2: new is worse
    one, two = mcnemar(ref, new), mcnemar(ref, new, alternative="two-sided")
    assert (two.b, two.c, two.n_discordant) == (10, 2, 12)
    assert one.p_value > 0.99  # "new is better" is hopeless
    assert two.p_value == pytest.approx(0.0386, abs=1e-4)  # 2 * P(X <= 2 | 12, 1/2) = 2 * 79/4096
    with pytest.raises(ValueError, match="shape"):
        mcnemar(ref, new[:3])


def test_wilson_upper_bound_shrinks_with_n() -> None:
    assert wilson_upper(0.9, 20) > wilson_upper(0.9, 2000) > 0.9
    assert wilson_upper(1.0, 5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_upper(0.5, 0)


def _preds(n: int, champ_right: int, chal_right: int, both_right: int) -> tuple[np.ndarray, ...]:
    """Labels all 0; chosen rows answered right (0) or wrong (1) by each model."""
    y = np.zeros(n, np.int64)
    champ, chal = np.ones(n, np.int64), np.ones(n, np.int64)
    champ[:both_right] = chal[:both_right] = 0
    champ[both_right : both_right + champ_right] = 0
    chal[both_right + champ_right : both_right + champ_right + chal_right] = 0
    return y, champ, chal


def test_production_gate_significant_improvement_passes() -> None:
    y, champ, chal = _preds(200, champ_right=3, chal_right=40, both_right=120)
    r = decide_production_gate(y, champ, chal, 0.991, 0.990)
    assert r.passed, r.reason
    assert (r.b, r.c, r.n) == (3, 40, 200)
    assert r.challenger_acc == pytest.approx(160 / 200) and r.champion_acc == pytest.approx(123 / 200)
    assert r.p_value is not None and r.p_value < 1e-6
    assert r.clean_drop == pytest.approx(0.001)


def test_production_gate_tie_fails() -> None:
    y, champ, chal = _preds(200, champ_right=20, chal_right=20, both_right=120)
    r = decide_production_gate(y, champ, chal, 0.99, 0.99)
    assert not r.passed and "not significantly better" in r.reason
    assert r.challenger_acc == r.champion_acc and r.p_value is not None and r.p_value > 0.5


def test_production_gate_small_improvement_not_significant_fails() -> None:
    y, champ, chal = _preds(200, champ_right=10, chal_right=15, both_right=120)  # p ~ 0.21
    assert not decide_production_gate(y, champ, chal, 0.99, 0.99).passed


def test_production_gate_clean_drop_fails_even_when_better_on_production() -> None:
    y, champ, chal = _preds(200, champ_right=3, chal_right=40, both_right=120)
    r = decide_production_gate(y, champ, chal, 0.992, 0.985, ProductionGateConfig(clean_tolerance=0.005))
    assert not r.passed and "clean test accuracy drops" in r.reason
    assert r.clean_drop == pytest.approx(0.007)


def test_production_gate_needs_enough_rows() -> None:
    y, champ, chal = _preds(20, champ_right=0, chal_right=20, both_right=0)
    r = decide_production_gate(y, champ, chal, 0.99, 0.99, ProductionGateConfig(min_rows=30))
    assert not r.passed and r.n == 20 and "only 20" in r.reason and r.p_value is None


# --- retrain trigger -------------------------------------------------------------------------------
POLICY = RetrainPolicy(cooldown_seconds=300, min_labelled=100)


def test_no_retrain_within_cooldown_then_retrain_after() -> None:
    alerts = [Alert("DataDriftSustained", started_at=1100.0)]
    within = POLICY.should_retrain(
        alerts, now=1200.0, last_job_time=1000.0, job_running=False, labelled_count=500
    )
    assert not within and "cool-down" in within.reason
    after = POLICY.should_retrain(
        alerts, now=1301.0, last_job_time=1000.0, job_running=False, labelled_count=500
    )
    assert after and after.rules == ("DataDriftSustained",)


def test_no_retrain_while_a_job_runs() -> None:
    d = POLICY.should_retrain(["RealizedAccuracyLow"], 10_000.0, None, job_running=True, labelled_count=500)
    assert not d and "already" in d.reason


def test_first_retrain_has_no_cooldown() -> None:
    d = POLICY.should_retrain([Alert("AccuracyDropVsReference", 5.0)], 10.0, None, False, 100)
    assert d and "no earlier job" in d.reason


def test_only_trigger_rules_count() -> None:
    alerts = [Alert("DataDrift", 1.0), Alert("OODRateHigh", 1.0)]
    d = POLICY.should_retrain(alerts, 10_000.0, None, False, 500)
    assert not d and "DataDrift" in d.reason and "no trigger alert" in d.reason
    custom = RetrainPolicy(0, trigger_rules={"OODRateHigh"}, min_labelled=0)
    assert custom.should_retrain(alerts, 10_000.0, None, False, 0)


def test_alert_firing_since_before_last_job_is_no_new_evidence() -> None:
    # one long drift episode must not retrain every cool-down period (the inputs stay shifted)
    stale = [Alert("DataDriftSustained", started_at=900.0)]
    d = POLICY.should_retrain(stale, now=5000.0, last_job_time=1000.0, job_running=False, labelled_count=500)
    assert not d and "not new evidence" in d.reason
    retry = POLICY.should_retrain(stale, 5000.0, 1000.0, False, 500, retry_stale=True)
    assert retry and "retrying" in retry.reason
    fresh = [Alert("DataDriftSustained", started_at=4000.0)]
    assert POLICY.should_retrain(fresh, 5000.0, 1000.0, False, 500)


def test_needs_enough_labelled_inputs() -> None:
    d = POLICY.should_retrain(["DataDriftSustained"], 10_000.0, None, False, labelled_count=40)
    assert not d and "only 40 labelled" in d.reason


def test_storm_of_alerts_triggers_once() -> None:
    # a drift alert re-evaluated every 5 s for 10 minutes: one job, then nothing until it is re-armed
    policy = RetrainPolicy(cooldown_seconds=300, min_labelled=0)
    alert = Alert("DataDriftSustained", started_at=0.0)
    last_job: float | None = None
    starts = []
    for now in np.arange(0.0, 600.0, 5.0):
        if policy.should_retrain([alert], float(now), last_job, job_running=False, labelled_count=10):
            starts.append(float(now))
            last_job = float(now) + 30.0  # the job finishes 30 s later
    assert starts == [0.0]


# --- post-promotion watch --------------------------------------------------------------------------
def test_watch_rolls_back_on_realized_drop_beyond_tolerance() -> None:
    w = PromotionWatch("3", previous_accuracy=0.97, tolerance=0.02, windows=3)
    assert w.observe(realized=0.96, estimated=0.9).action == "watch"  # within tolerance
    d = w.observe(realized=0.94, estimated=0.99)
    assert d.action == "rollback" and d.source == "realized" and d.accuracy == 0.94
    assert "previous champion 3" in d.reason and "0.9700" in d.reason
    assert w.done and w.observe(0.99, 0.99).action == "rollback"  # terminal decisions stick


def test_watch_passes_after_n_good_windows() -> None:
    w = PromotionWatch("3", previous_accuracy=0.80, tolerance=0.02, windows=3)
    actions = [w.observe(realized=r, estimated=None).action for r in (0.95, 0.79, 0.96)]
    assert actions == ["watch", "watch", "passed"] and w.windows_ok == 3


def test_watch_uses_estimate_without_labels_and_skips_empty_windows() -> None:
    w = PromotionWatch("3", previous_accuracy=0.97, tolerance=0.02, windows=2, previous_estimated=0.95)
    d = w.observe(realized=None, estimated=None)
    assert d.action == "watch" and d.windows_ok == 0  # no information: does not count
    d = w.observe(realized=None, estimated=0.94)  # vs the previous *estimate* 0.95: fine
    assert d.action == "watch" and d.source == "estimated" and d.windows_ok == 1
    d = w.observe(realized=None, estimated=0.90)
    assert d.action == "rollback" and d.source == "estimated"


def test_watch_small_noisy_window_is_not_a_rollback_but_a_broken_model_is() -> None:
    w = PromotionWatch("3", previous_accuracy=0.97, tolerance=0.02, windows=3)
    assert w.observe(realized=0.9, estimated=None, realized_n=20).action == "watch"  # 18/20 right
    broken = PromotionWatch("3", previous_accuracy=0.97, tolerance=0.02, windows=3)
    assert broken.observe(realized=0.1, estimated=None, realized_n=20).action == "rollback"


def test_watch_state_round_trips_through_json() -> None:
    import json

    w = PromotionWatch("3", previous_accuracy=0.97, tolerance=0.02, windows=3, previous_estimated=0.96)
    w.observe(realized=0.97, estimated=None)
    restored = PromotionWatch.restore(json.loads(json.dumps(w.state())))
    assert restored.state() == w.state() and (restored.windows_ok, restored.observed) == (1, 1)
    # the restored watch decides its next windows exactly as the original would have
    assert [restored.observe(0.975, None).action, restored.observe(0.9, None).action] == ["watch", "rollback"]
    assert restored.decision is not None and "watched window 3" in restored.decision.reason


# --- shadow verdict --------------------------------------------------------------------------------
@dataclass
class Pairs:
    champion_labels: np.ndarray
    shadow_labels: np.ndarray
    true_labels: np.ndarray


def test_shadow_accounting() -> None:
    champ = np.array([1, 2, 3, 4, 5, 6])
    shadow = np.array([1, 2, 0, 4, 9, 9])
    true = np.array([1, 7, 0, -1, 9, 6])  # row 3 has no feedback yet
    s = ShadowVerdict.account(champ, shadow, true)
    assert s.n == 6 and s.agreement == pytest.approx(3 / 6)  # agreement counts unlabelled rows too
    assert s.n_labelled == 5
    assert s.champion_acc == pytest.approx(2 / 5) and s.challenger_acc == pytest.approx(3 / 5)
    assert (s.b, s.c) == (1, 2)  # champion-only right: row 5; challenger-only right: rows 2, 4


def test_shadow_waits_for_requests_and_labels() -> None:
    v = ShadowVerdict(min_requests=10, min_labelled=5)
    few = Pairs(np.zeros(5, int), np.zeros(5, int), np.zeros(5, int))
    assert v.decide(few).action == "wait" and "5/10 requests" in v.decide(few).reason
    unlabelled = Pairs(np.zeros(20, int), np.zeros(20, int), -np.ones(20, int))
    d = v.decide(unlabelled)
    assert d.action == "wait" and d.stats.agreement == 1.0 and d.stats.champion_acc is None


def test_shadow_promotes_a_better_challenger_and_rejects_a_worse_one() -> None:
    v = ShadowVerdict(min_requests=50, min_labelled=50)
    y = np.arange(100) % 10
    good, bad = y.copy(), y.copy()
    bad[:40] = (y[:40] + 1) % 10  # 40 wrong
    better = v.decide(Pairs(champion_labels=bad, shadow_labels=good, true_labels=y))
    assert better.action == "promote" and better.stats.challenger_acc == 1.0
    worse = v.decide(Pairs(champion_labels=good, shadow_labels=bad, true_labels=y))
    assert worse.action == "reject" and "significantly worse" in worse.reason


def test_shadow_slightly_behind_waits_then_rejects_at_the_label_cap() -> None:
    v = ShadowVerdict(min_requests=10, min_labelled=10, max_labelled=200)
    y = np.arange(100) % 10
    chal = y.copy()
    chal[:2] = (y[:2] + 1) % 10  # 2 more errors than the champion: behind, not significant
    assert v.decide(Pairs(y, chal, y)).action == "wait"
    y2, chal2 = np.tile(y, 2), np.tile(chal, 2)
    chal2[100:102] = y2[100:102]  # still 2 behind after 200 labelled rows
    assert v.decide(Pairs(y2, chal2, y2)).action == "reject"
