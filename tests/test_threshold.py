"""Prognosis threshold: ROC / AUC / Youden on hand-computed data, the CLI, and the cohort simulation's logic."""

import numpy as np
import pytest

from pipelines.threshold import STUDY_COHORT, roc, rule_metrics, simulate_cohort, youden
from tools.fit_threshold import main as fit_main


def test_roc_auc_and_youden_hand_computed():
    shares = np.array([0.10, 0.05, 0.03, 0.01, 0.00, 0.04])
    groups = np.array([1, 1, 1, 0, 0, 0])
    r = roc(shares, groups)
    # pairs (pos, neg): 3 x 3 = 9; positives above negatives except 0.03 < 0.04 -> AUC = 8/9
    assert r["auc"] == pytest.approx(8 / 9)
    assert youden(r) == pytest.approx(0.03)  # ties (0.05: sens 2/3 spec 1; 0.03: sens 1 spec 2/3): the smaller
    m = rule_metrics(shares, groups, 0.02)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 0, 2)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(0.6667, abs=1e-4)
    with pytest.raises(ValueError):
        roc(shares[:3], groups[:3])


def test_fit_threshold_cli(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text("smear_id,k,n,group\na,3,30,1\nb,1,50,1\nc,0,40,0\nd,0,25,0\ne,1,200,0\n")
    assert fit_main([str(csv), "--threshold", "0.02", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "AUC 1.0" in out and "threshold 0.02" in out
    assert (tmp_path / "o" / "roc.png").stat().st_size > 1000 and (tmp_path / "o" / "threshold.json").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("smear_id,k,n,group\na,5,3,1\n")
    assert fit_main([str(bad), "--out", str(tmp_path / "o2")]) == 2


def test_simulation_with_a_perfect_classifier_is_perfect():
    rng = np.random.default_rng(0)
    m = simulate_cohort(rng, confusion=np.eye(3) * 100, threshold=0.001)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0
    assert m["tp"] + m["fn"] == STUDY_COHORT["positive"]["smears"]
    assert m["tn"] + m["fp"] == STUDY_COHORT["negative"]["smears"]


def test_simulation_with_study_confusion_is_in_range():
    rng = np.random.default_rng(1)
    runs = [simulate_cohort(rng) for _ in range(50)]
    sens = np.mean([r["sensitivity"] for r in runs])
    spec = np.mean([r["specificity"] for r in runs])
    assert 0.8 < sens <= 1.0 and 0.7 < spec <= 1.0
