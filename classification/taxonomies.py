"""Cell taxonomies as data, and how the public datasets map onto them.

Label indexing: a classifier's output index ``i`` is ``TAXONOMIES[task][i]``.
"""

from __future__ import annotations

TAXONOMIES: dict[str, list[str]] = {
    # Acevedo et al. 2019/2020: the PBC dataset's eight groups.
    "pbc8": ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"],
    # Wang et al. 2019: eleven leukocyte classes. reactive_lymphocyte has no public data here (slot kept).
    "wang11": ["blast", "promyelocyte", "myelocyte", "metamyelocyte", "band_neutrophil", "segmented_neutrophil",
               "lymphocyte", "monocyte", "eosinophil", "basophil", "reactive_lymphocyte"],
    # Rodellar et al. 2022: lymphoid cells of COVID-19 patients.
    "covid_rl": ["normal_lymphocyte", "classic_rl", "covid_rl"],
}

UNIDENTIFIED = "unidentified"

# Labels (of any taxonomy) that are lymphoid cells: the cascade sends these to covid_rl.
LYMPHOID = {"lymphocyte", "reactive_lymphocyte", "normal_lymphocyte", "classic_rl", "covid_rl"}

# Immature granulocytes and blasts, for the differential's flags.
IMMATURE_GRANULOCYTES = {"ig", "promyelocyte", "myelocyte", "metamyelocyte"}
BLASTS = {"blast"}
NUCLEATED_RED_CELLS = {"erythroblast"}
PLATELETS = {"platelet", "Platelets"}

# PBC fine labels (manifest column fine_label) -> wang11 label; labels not listed have no wang11 class.
PBC_FINE_TO_WANG11 = {
    "promyelocyte": "promyelocyte", "myelocyte": "myelocyte", "metamyelocyte": "metamyelocyte",
    "band_neutrophil": "band_neutrophil", "segmented_neutrophil": "segmented_neutrophil",
    "lymphocyte": "lymphocyte", "monocyte": "monocyte", "eosinophil": "eosinophil", "basophil": "basophil",
}
LMU_TO_WANG11 = {"blast": "blast", "segmented_neutrophil": "segmented_neutrophil"}


def check_task(task: str) -> list[str]:
    """Return the class list of ``task`` or raise naming the valid tasks."""
    if task not in TAXONOMIES:
        raise ValueError(f"unknown taxonomy '{task}'; valid: {sorted(TAXONOMIES)}")
    return TAXONOMIES[task]

# Finer label -> the coarser label it refines (across taxonomies), for fusing a cascade's verdicts.
PARENT = {
    "promyelocyte": "ig", "myelocyte": "ig", "metamyelocyte": "ig",
    "band_neutrophil": "neutrophil", "segmented_neutrophil": "neutrophil",
    "reactive_lymphocyte": "lymphocyte", "normal_lymphocyte": "lymphocyte",
    "classic_rl": "reactive_lymphocyte", "covid_rl": "reactive_lymphocyte",
}


def refines(fine: str, coarse: str) -> bool:
    """True when ``fine`` is ``coarse`` or a descendant of it in ``PARENT`` (e.g. covid_rl refines lymphocyte)."""
    while fine is not None:
        if fine == coarse:
            return True
        fine = PARENT.get(fine)
    return False
