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
    # One label space for one network: wang11's eleven classes plus pbc8's erythroblast and platelet. Its pbc8 and
    # wang11 verdicts are views of it (VIEWS), consistent by construction.
    "fine13": ["blast", "promyelocyte", "myelocyte", "metamyelocyte", "band_neutrophil", "segmented_neutrophil",
               "lymphocyte", "monocyte", "eosinophil", "basophil", "reactive_lymphocyte", "erythroblast", "platelet"],
}

# Taxonomies a network's output gives as views (summed onto the classes each fine class is or refines, see
# ``view_matrix``): a fine13 network answers pbc8 and wang11 in one forward pass.
VIEWS: dict[str, list[str]] = {"fine13": ["pbc8", "wang11"]}

# Coarse labels a training sample may carry instead of a fine13 class (PBC's unspecified neutrophil and ig, BCCD's
# per-field subtypes): the loss is then on the summed probability of the fine classes that refine it
# (``label_sets``).
COARSE_LABELS = ["neutrophil", "ig", "mature_leukocyte"]
# Coarse labels that are not a parent class: the fine classes they allow. ``mature_leukocyte``: a leukocyte of a
# normal donor's smear (no blasts, no immature granulocytes), the weak label of TXL-PBC's Raabin-WBC cells.
LABEL_SET_MEMBERS = {"mature_leukocyte": {"band_neutrophil", "segmented_neutrophil", "lymphocyte", "monocyte",
                                          "eosinophil", "basophil"}}

UNIDENTIFIED = "unidentified"
# Final label of a cell whose familiarity score (``ood``) is above its classifier's threshold: unlike the training
# laboratories' cells, so its class is not a verdict (kept out of the differential like ``unidentified``).
UNFAMILIAR = "unfamiliar"

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


def label_sets(labels: list[str], classes: list[str]):
    """(L, K) 0/1 matrix: row i marks the classes that ``labels[i]`` allows: a label that is a class, that class
    alone (``lymphocyte`` is not also ``reactive_lymphocyte``); a coarse label such as ``neutrophil``, the classes
    that refine it (band and segmented neutrophils). Raises ``ValueError`` for a label no class refines."""
    import numpy as np

    def allows(c: str, lab: str) -> bool:
        if lab in classes:
            return c == lab
        if lab in LABEL_SET_MEMBERS:
            return c in LABEL_SET_MEMBERS[lab]
        return refines(c, lab)

    m = np.array([[allows(c, lab) for c in classes] for lab in labels], np.float32)
    empty = [lab for lab, row in zip(labels, m) if not row.any()]
    if empty:
        raise ValueError(f"labels {empty} are not (and are not refined by) any of {classes}")
    return m


def view_matrix(fine: list[str], view: list[str]):
    """(F, V) 0/1 matrix: fine class f -> the view class it is (first) or refines (fine13's band_neutrophil -> pbc8's
    neutrophil); rows of fine classes without one are zero (fine13's blast has no pbc8 class and does not vote in
    the pbc8 view)."""
    import numpy as np

    m = np.zeros((len(fine), len(view)), np.float64)
    for i, f in enumerate(fine):
        j = view.index(f) if f in view else next((j for j, v in enumerate(view) if refines(f, v)), None)
        if j is not None:
            m[i, j] = 1.0
    return m


def view_probs(probs, fine: list[str], view: list[str]):
    """Probabilities (N, V) of the ``view`` taxonomy from (N, F) ``fine`` probabilities: summed onto the view class
    each fine class refines and renormalized over the mass that has one. float32."""
    import numpy as np

    q = np.asarray(probs, np.float64) @ view_matrix(fine, view)
    return (q / np.clip(q.sum(1, keepdims=True), 1e-12, None)).astype(np.float32)
