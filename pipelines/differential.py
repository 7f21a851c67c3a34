"""Per-smear aggregation: white-cell differential with 95% confidence intervals, NRBC per 100 WBC, flags, and the
COVID-19 prognosis rule of Rodellar et al. 2022. Pure functions over ``FieldResult`` records.

What is counted (documented in the README):
- leukocytes: cells whose detector label is in ``classify_labels`` (WBC) and whose final label is a leukocyte class
  (not ``erythroblast``, not ``platelet``, not ``unidentified``). Without classifiers the class is the detector's.
- NRBC: cells classified ``erythroblast``: reported per 100 leukocytes, not in the differential.
- platelets: detector ``Platelets`` boxes plus cells classified ``platelet``; ``unidentified`` and ``unfamiliar``
  cells (too uncertain; unlike the training laboratories' cells): counted apart.
- domain shift: the smear's cells as a whole are unlike the training laboratories' (median familiarity score
  ``ood`` or share of ``unfamiliar`` cells over the thresholds), or the classifier is unsure of them (mean top-class
  probability ``score`` under its threshold): the ``domain_shift`` flag says the differential is not reliable for
  this smear.
- prognosis: ``n`` = lymphoid cells the ``covid_rl`` classifier saw and did not leave unidentified, ``k`` = those
  whose final label is ``covid_rl``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from classification.taxonomies import (BLASTS, IMMATURE_GRANULOCYTES, NUCLEATED_RED_CELLS, PLATELETS, UNFAMILIAR,
                                       UNIDENTIFIED)
from core.config import ConfigError, Field

DIFFERENTIAL_SCHEMA = {
    "ci_method": Field(str, "wilson", "95% CI of proportions: wilson | clopper-pearson"),
    "min_leukocytes": Field(int, 200, "flag counts below this (CLSI H20 reference count)", min=1),
    "ig_threshold": Field(float, 0.02, "flag immature granulocytes above this share of leukocytes", min=0.0, max=1.0),
    "unidentified_threshold": Field(float, 0.10, "flag when this share of classified cells is unidentified", min=0.0,
                                    max=1.0),
    "prognosis_threshold": Field(float, 0.02, "COVID-19 RL share of lymphoid cells for a positive smear (study: 2%)",
                                 min=0.0, max=1.0),
    "prognosis_min_lymphoid": Field(int, 20, "fewer lymphoid cells analysed: prognosis indeterminate", min=0),
    "prognosis_use_ci": Field(bool, True, "indeterminate when the 95% CI of k/n straddles the threshold"),
    "leukocyte_labels": Field(list, ["WBC"], "detector labels counted as leukocytes when classified"),
    # 1.5: the operating point of tools/eval_guard.py (docs/RESULTS.md): pseudo-smears of 20 held-out PBC / lmu_aml
    # cells flagged 0% / 0.6%, those of a laboratory left out of the score's fit 100% (BCCD, TXL-PBC)
    "domain_shift_median_ood": Field(float, 1.5, "domain_shift flag when the median familiarity score (ood) of the "
                                                 "smear's scored cells is above this", min=0.0),
    "domain_shift_unfamiliar_share": Field(float, 0.3, "... or when this share of its scored cells is unfamiliar",
                                           min=0.0, max=1.0),
    # 0.85: about the 0.5th percentile of the mean score of 20-cell pseudo-smears of held-out PBC cells (val 0.846,
    # test 0.851; lmu_aml's are higher): a smear of a training laboratory is rarely under it (tools/eval_guard.py)
    "domain_shift_min_confidence": Field(float, 0.85, "... or when the mean top-class probability (score) of its "
                                                      "classified leukocytes is below this (0: off)", min=0.0, max=1.0),
    "domain_shift_min_cells": Field(int, 3, "scored cells needed before the smear-level guard decides", min=1),
}

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k/n; (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of k/n; (0, 1) when n == 0."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


CI_METHODS = {"wilson": wilson, "clopper-pearson": clopper_pearson}


def proportion_ci(k: int, n: int, method: str = "wilson") -> tuple[float, float]:
    """95% CI of k/n by ``method`` (a key of ``CI_METHODS``)."""
    if method not in CI_METHODS:
        raise ConfigError(f"unknown ci_method '{method}'; valid: {sorted(CI_METHODS)}")
    return CI_METHODS[method](k, n)


@dataclass
class SmearTally:
    """Running counts of one smear, filled field by field (constant memory per smear)."""

    smear_id: str
    fields_used: int = 0
    fields_failed: int = 0
    failed_paths: list[str] = field(default_factory=list)
    leukocytes: dict[str, int] = field(default_factory=dict)
    nrbc: int = 0
    platelets: int = 0
    unidentified: int = 0
    classified: int = 0
    other_cells: dict[str, int] = field(default_factory=dict)
    covid_ran: bool = False
    lymphoid_n: int = 0
    covid_k: int = 0
    unfamiliar: int = 0
    ood: list[float] = field(default_factory=list)  # familiarity scores of the smear's classified leukocyte boxes
    score_sum: float = 0.0  # sum and count of the top-class probabilities (``score``) of those boxes
    scored: int = 0
    fields_unanalysable: int = 0  # fields with detector warnings (FieldResult.warnings): cells not counted
    unanalysable_reasons: list[str] = field(default_factory=list)  # one example per kind of reason
    unanalysable_kinds: set[str] = field(default_factory=set)  # those kinds (digits masked)
    fields_rescaled: int = 0  # fields the detector's auto_scale detected again at a larger input size
    rescaled_max: int = 0

    def add(self, rec: dict, leukocyte_labels: set[str]) -> None:
        """Add one ``fields.jsonl`` record (a dict)."""
        if rec.get("error"):
            self.fields_failed += 1
            if len(self.failed_paths) < 50:
                self.failed_paths.append(rec["path"])
            return
        if rec.get("warnings"):  # the detector cannot read this field: its cells are not counted
            self.fields_unanalysable += 1
            kind = re.sub(r"\d+", "#", rec["warnings"][0])  # one example per kind of reason, not per percentage
            if len(self.unanalysable_reasons) < 5 and kind not in self.unanalysable_kinds:
                self.unanalysable_kinds.add(kind)
                self.unanalysable_reasons.append(rec["warnings"][0])
            return
        self.fields_used += 1
        if rec.get("rescaled_imgsz"):
            self.fields_rescaled += 1
            self.rescaled_max = max(self.rescaled_max, int(rec["rescaled_imgsz"]))
        for c in rec["cells"]:
            label, det = c["label"], c["det_label"]
            if det in PLATELETS:
                self.platelets += 1
                continue
            if det not in leukocyte_labels:
                self.other_cells[det] = self.other_cells.get(det, 0) + 1
                continue
            classes = c.get("classes") or {}
            if classes:
                self.classified += 1
                if c.get("score") is not None:
                    self.score_sum += float(c["score"])
                    self.scored += 1
            if c.get("ood") is not None:
                self.ood.append(float(c["ood"]))
            if "covid_rl" in classes:
                self.covid_ran = True
                if label != UNIDENTIFIED:
                    self.lymphoid_n += 1
                    self.covid_k += label == "covid_rl"
            if label == UNIDENTIFIED:
                self.unidentified += 1
            elif label == UNFAMILIAR:
                self.unfamiliar += 1
            elif label in NUCLEATED_RED_CELLS:
                self.nrbc += 1
            elif label in PLATELETS:
                self.platelets += 1
            else:
                self.leukocytes[label] = self.leukocytes.get(label, 0) + 1


def prognosis(tally: SmearTally, cfg: dict) -> dict:
    """The COVID-19 RL rule: positive when k/n reaches the threshold; see the module docstring for k and n."""
    t = cfg["prognosis_threshold"]
    if not tally.covid_ran:
        return {"enabled": False, "decision": None, "reason": "no covid_rl classifier ran on this smear"}
    k, n = tally.covid_k, tally.lymphoid_n
    share = k / n if n else None
    lo, hi = proportion_ci(k, n, cfg["ci_method"])
    point = None if share is None else ("positive" if share >= t else "negative")
    base = {"enabled": True, "k": k, "n": n, "share": None if share is None else round(share, 4),
            "ci95": [round(lo, 4), round(hi, 4)], "threshold": t, "point_decision": point}
    if n < cfg["prognosis_min_lymphoid"]:
        return {**base, "decision": "indeterminate",
                "reason": f"only {n} lymphoid cells analysed (< {cfg['prognosis_min_lymphoid']})"}
    if cfg["prognosis_use_ci"] and lo < t <= hi:
        return {**base, "decision": "indeterminate",
                "reason": f"share {share:.2%} but its 95% CI [{lo:.2%}, {hi:.2%}] straddles the {t:.0%} threshold"}
    if share >= t:
        return {**base, "decision": "positive",
                "reason": f"{k}/{n} = {share:.2%} COVID-19 RL of lymphoid cells >= {t:.0%} (better-prognosis group)"}
    return {**base, "decision": "negative", "reason": f"{k}/{n} = {share:.2%} COVID-19 RL of lymphoid cells < {t:.0%}"}


def familiarity(tally: SmearTally) -> dict | None:
    """Summary of the smear's familiarity scores: cells scored, median, unfamiliar share; None when none scored."""
    if not tally.ood:
        return None
    import statistics

    return {"cells": len(tally.ood), "median_ood": round(statistics.median(tally.ood), 4),
            "unfamiliar_share": round(tally.unfamiliar / len(tally.ood), 4)}


def confidence(tally: SmearTally) -> dict | None:
    """The classifier's confidence on the smear: classified leukocytes with a score, their mean top-class
    probability; None when none."""
    if not tally.scored:
        return None
    return {"cells": tally.scored, "mean_score": round(tally.score_sum / tally.scored, 4)}


def domain_shift(tally: SmearTally, cfg: dict) -> str | None:
    """The ``domain_shift`` flag's sentence when the smear's cells as a whole are unlike the training laboratories'
    (median ``ood`` or unfamiliar share over the config's thresholds) or the classifier is unsure of them (mean
    score under ``domain_shift_min_confidence``), each judged on at least ``domain_shift_min_cells`` cells; else
    None."""
    why = []
    fam, conf, least = familiarity(tally), confidence(tally), cfg["domain_shift_min_cells"]
    if fam is not None and fam["cells"] >= least:
        if fam["median_ood"] > cfg["domain_shift_median_ood"]:
            why.append(f"median familiarity score {fam['median_ood']:.2f} > {cfg['domain_shift_median_ood']:g}")
        if fam["unfamiliar_share"] > cfg["domain_shift_unfamiliar_share"]:
            why.append(f"{tally.unfamiliar} of {fam['cells']} cells unfamiliar "
                       f"(> {cfg['domain_shift_unfamiliar_share']:.0%})")
    t = cfg["domain_shift_min_confidence"]
    if t > 0 and conf is not None and conf["cells"] >= least and conf["mean_score"] < t:
        why.append(f"the classifier is unsure of its cells: mean top-class probability {conf['mean_score']:.2f} "
                   f"< {t:g}")
    if not why:
        return None
    return ("this smear's cells are unlike the laboratories the classifiers learned from, or hard for them (" +
            "; ".join(why) +
            "): the differential is not reliable for it. Review the cells, then adapt the classifier to your "
            "laboratory with about 20 labelled cells per class (tools/adapt_classifier.py --labels; README, "
            "Running on your laboratory's captures)")


def smear_report(tally: SmearTally, cfg: dict) -> dict:
    """The per-smear report (schema in the README): differential with CIs, NRBC, platelets, flags, prognosis."""
    n = sum(tally.leukocytes.values())
    diff = {}
    for label, k in sorted(tally.leukocytes.items(), key=lambda kv: (-kv[1], kv[0])):
        lo, hi = proportion_ci(k, n, cfg["ci_method"])
        diff[label] = {"count": k, "percent": round(100 * k / n, 2), "ci95": [round(100 * lo, 2), round(100 * hi, 2)]}
    flags = []
    if tally.fields_failed:
        flags.append({"flag": "fields_failed", "detail": f"{tally.fields_failed} field(s) could not be read"})
    if n < cfg["min_leukocytes"]:
        flags.append({"flag": "low_count", "detail": f"{n} leukocytes counted (< {cfg['min_leukocytes']}): "
                                                       "percentages are imprecise; count more fields"})
    blasts = sum(tally.leukocytes.get(b, 0) for b in BLASTS)
    shift = domain_shift(tally, cfg)
    if blasts:
        # On a laboratory the classifier never learned, its stain alone can make normal leukocytes look like blasts
        # (docs/RESULTS.md "Stain colour": 20-49% of an unseen laboratory's normal leukocytes): the flag stays, but
        # says so when the smear is flagged domain_shift.
        flags.append({"flag": "blasts_present", "detail": f"{blasts} blast(s): review the cells" + (
            "; this smear is also flagged domain_shift, and on a laboratory the classifier did not learn its stain "
            "alone can make normal leukocytes look like blasts to it: confirm each one on the slide" if shift else "")})
    ig = sum(tally.leukocytes.get(b, 0) for b in IMMATURE_GRANULOCYTES)
    if n and ig / n > cfg["ig_threshold"]:
        flags.append({"flag": "immature_granulocytes", "detail": f"{ig} immature granulocytes = {ig / n:.1%} "
                                                                  f"(> {cfg['ig_threshold']:.0%})"})
    if tally.nrbc:
        flags.append({"flag": "nrbc_present", "detail": f"{tally.nrbc} nucleated red cells"})
    if tally.classified and tally.unidentified / tally.classified > cfg["unidentified_threshold"]:
        flags.append({"flag": "many_unidentified", "detail": f"{tally.unidentified} of {tally.classified} "
                                                             "classified cells are unidentified: review them"})
    if tally.fields_unanalysable:
        flags.append({"flag": "unanalysable", "detail": f"{tally.fields_unanalysable} field(s) could not be read by "
                      "the detector and were not counted (e.g. " + "; ".join(tally.unanalysable_reasons) + "): capture "
                      "them at 100x oil, or check that they are blood smear fields"})
    if shift:
        flags.append({"flag": "domain_shift", "detail": shift})
    if tally.fields_rescaled:
        flags.append({"flag": "small_cells", "detail": f"{tally.fields_rescaled} of {tally.fields_used} fields have "
                      "red cells smaller than the training fields' (a lower magnification?): detected again at up to "
                      f"{tally.rescaled_max} px; the classifiers learned from 100x oil images: review the cells"})
    return {"smear_id": tally.smear_id, "fields_used": tally.fields_used, "fields_failed": tally.fields_failed,
            "fields_unanalysable": tally.fields_unanalysable,
            "failed_paths": tally.failed_paths, "leukocytes_counted": n, "differential": diff,
            "nrbc": {"count": tally.nrbc, "per_100_wbc": round(100 * tally.nrbc / n, 2) if n else None},
            "platelets": tally.platelets, "unidentified": tally.unidentified, "unfamiliar": tally.unfamiliar,
            "familiarity": familiarity(tally), "confidence": confidence(tally), "other_cells": tally.other_cells,
            "ci_method": cfg["ci_method"], "flags": flags, "prognosis": prognosis(tally, cfg)}
