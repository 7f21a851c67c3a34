"""Differential statistics and the prognosis rule on hand-computed cases."""

import pytest

from core.config import validate
from pipelines.differential import DIFFERENTIAL_SCHEMA, SmearTally, clopper_pearson, prognosis, smear_report, wilson

CFG = validate({}, DIFFERENTIAL_SCHEMA, "test")


def test_wilson_known_values():
    lo, hi = wilson(10, 100)  # textbook: 0.0552 - 0.1744
    assert lo == pytest.approx(0.0552, abs=1e-4) and hi == pytest.approx(0.1744, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(10, 100)  # exact: 0.0490 - 0.1762
    assert lo == pytest.approx(0.0490, abs=1e-4) and hi == pytest.approx(0.1762, abs=1e-4)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    assert clopper_pearson(0, 10)[1] == pytest.approx(0.3085, abs=1e-4)


def cell(label, det="WBC", tasks=("pbc8",)):
    return {"box": [0, 0, 1, 1], "det_label": det, "det_score": 0.9, "label": label, "score": 0.9,
            "classes": {t: {"label": label, "score": 0.9, "probs": {}} for t in tasks}}


def field(cells, error=None):
    return {"path": "p", "smear_id": "s", "cells": cells if not error else [], "error": error}


def test_differential_hand_computed():
    t = SmearTally("s")
    cells = ([cell("neutrophil")] * 6 + [cell("lymphocyte")] * 3 + [cell("monocyte")] + [cell("erythroblast")] * 2
             + [cell("unidentified")] + [cell("platelet")] + [cell("RBC", det="RBC", tasks=())] * 5
             + [cell("Platelets", det="Platelets", tasks=())] * 4)
    t.add(field(cells), {"WBC"})
    t.add(field([], error="truncated"), {"WBC"})
    t.add(field([]), {"WBC"})  # an empty field is a valid, used field
    r = smear_report(t, CFG)
    assert r["fields_used"] == 2 and r["fields_failed"] == 1
    assert r["leukocytes_counted"] == 10
    assert r["differential"]["neutrophil"]["count"] == 6 and r["differential"]["neutrophil"]["percent"] == 60.0
    lo, hi = wilson(6, 10)
    assert r["differential"]["neutrophil"]["ci95"] == [round(100 * lo, 2), round(100 * hi, 2)]
    assert list(r["differential"]) == ["neutrophil", "lymphocyte", "monocyte"]
    assert r["nrbc"] == {"count": 2, "per_100_wbc": 20.0}
    assert r["platelets"] == 5 and r["unidentified"] == 1 and r["other_cells"] == {"RBC": 5}
    flags = {f["flag"] for f in r["flags"]}
    assert flags == {"fields_failed", "low_count", "nrbc_present"}  # 1/14 unidentified < 10%
    assert r["prognosis"]["enabled"] is False


def test_flags_blasts_ig_unidentified():
    t = SmearTally("s")
    t.add(field([cell("blast")] + [cell("myelocyte")] * 3 + [cell("neutrophil")] * 96 + [cell("unidentified")] * 20),
          {"WBC"})
    flags = {f["flag"] for f in smear_report(t, CFG)["flags"]}
    assert {"blasts_present", "immature_granulocytes", "many_unidentified", "low_count"} <= flags


def test_small_cells_flag_counts_rescaled_fields():
    t = SmearTally("s")
    t.add({**field([cell("neutrophil")]), "rescaled_imgsz": 512}, {"WBC"})
    t.add({**field([cell("lymphocyte")]), "rescaled_imgsz": 576}, {"WBC"})
    t.add({**field([cell("neutrophil")]), "rescaled_imgsz": None}, {"WBC"})
    t.add(field([cell("neutrophil")]), {"WBC"})  # records written before the key existed
    t.add({**field([], error="truncated"), "rescaled_imgsz": None}, {"WBC"})
    flags = {f["flag"]: f["detail"] for f in smear_report(t, CFG)["flags"]}
    assert flags["small_cells"].startswith("2 of 4 fields have red cells smaller") and "up to 576 px" in flags[
        "small_cells"]
    t2 = SmearTally("s")
    t2.add(field([cell("neutrophil")]), {"WBC"})
    assert "small_cells" not in {f["flag"] for f in smear_report(t2, CFG)["flags"]}


def test_empty_smear_report():
    t = SmearTally("s")
    t.add(field([]), {"WBC"})
    r = smear_report(t, CFG)
    assert r["leukocytes_counted"] == 0 and r["differential"] == {} and r["nrbc"]["per_100_wbc"] is None


def _covid_tally(k, n):
    t = SmearTally("s")
    cells = [cell("covid_rl", tasks=("pbc8", "covid_rl"))] * k + \
        [cell("normal_lymphocyte", tasks=("pbc8", "covid_rl"))] * (n - k)
    t.add(field(cells), {"WBC"})
    return t


def test_prognosis_decisions():
    p = prognosis(_covid_tally(30, 300), CFG)  # 10%, CI well above 2%
    assert p["decision"] == "positive" and p["k"] == 30 and p["n"] == 300 and p["point_decision"] == "positive"
    p = prognosis(_covid_tally(0, 400), CFG)  # 0%, CI upper ~0.95% < 2%
    assert p["decision"] == "negative"
    p = prognosis(_covid_tally(2, 100), CFG)  # exactly 2%: point rule positive, CI straddles
    assert p["point_decision"] == "positive" and p["decision"] == "indeterminate" and "straddles" in p["reason"]
    p = prognosis(_covid_tally(1, 10), CFG)
    assert p["decision"] == "indeterminate" and "only 10" in p["reason"]
    no_ci = {**CFG, "prognosis_use_ci": False}
    assert prognosis(_covid_tally(2, 100), no_ci)["decision"] == "positive"
    assert prognosis(_covid_tally(1, 100), no_ci)["decision"] == "negative"


def test_unanalysable_fields_are_not_counted_and_flagged():
    from core.config import validate
    from pipelines.differential import DIFFERENTIAL_SCHEMA, SmearTally, smear_report

    t = SmearTally("s")
    cell = {"label": "blast", "det_label": "WBC", "classes": {"pbc8": {}}}
    t.add({"error": None, "cells": [cell], "warnings": ["1 leukocyte box(es) 9.0 red-cell diameters wide"]}, {"WBC"})
    t.add({"error": None, "cells": [{**cell, "label": "lymphocyte"}]}, {"WBC"})
    t.add({"error": None, "cells": [cell], "warnings": ["2 leukocyte box(es) 11.5 red-cell diameters wide"]}, {"WBC"})
    t.add({"error": None, "cells": [cell], "warnings": ["leukocyte boxes cover 71% of the field"]}, {"WBC"})
    rep = smear_report(t, validate({}, DIFFERENTIAL_SCHEMA, "t"))
    assert rep["fields_unanalysable"] == 3 and rep["fields_used"] == 1 and rep["leukocytes_counted"] == 1
    flags = {f["flag"]: f["detail"] for f in rep["flags"]}
    assert "blasts_present" not in flags and "red-cell diameters" in flags["unanalysable"]
    # one example per kind of reason: the second "diameters" field does not repeat it, the other kind is named
    assert flags["unanalysable"].count("diameters") == 1 and "cover 71%" in flags["unanalysable"]
