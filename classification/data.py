"""Single-cell datasets for the classifiers: manifests of ../shared/data mapped onto a taxonomy.

A sample is ``(path, label)`` with ``label`` a class name of the task's taxonomy. Sources:
- ``pbc8``: PBC ``class8``.
- ``wang11``: PBC fine labels (``PBC_FINE_TO_WANG11``) + lmu_aml blasts and segmented neutrophils. PBC's unspecified
  ``neutrophil`` and ``ig`` fine labels, erythroblasts and platelets have no wang11 class and are left out.
- ``fine13``: every PBC cell (unspecified ``neutrophil`` / ``ig`` keep that coarse label, see
  ``taxonomies.COARSE_LABELS``) + lmu_aml + labelled cell sets (``labels.csv`` of ``tools/prepare_cells.py`` or
  of a review export: ``path,label[,split]``, paths relative to the CSV; e.g. BCCD's detected leukocytes with their
  per-field subtype).
"""

from __future__ import annotations

import csv
from pathlib import Path

from classification.harmonize import harmonize, reference_stats, zoom_between
from classification.taxonomies import COARSE_LABELS, LMU_TO_WANG11, PBC_FINE_TO_WANG11, check_task
from core.config import data_root, resolve_path
from core.io import read_image, square_resize


def _manifest(name: str) -> tuple[Path, list[dict]]:
    root = data_root() / name
    path = root / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (real data lives in ../shared/data or $LEUKODIFF_DATA)")
    with open(path, newline="") as f:
        return root, list(csv.DictReader(f))


def load_label_csv(path, split: str | None = None) -> list[tuple[Path, str]]:
    """Labelled cells of a ``labels.csv`` (header ``path,label`` and optionally ``split``; ``path`` relative to the
    CSV's folder): ``(absolute path, lower-case label)`` of rows with a label (and of ``split`` when given).
    Raises ``ValueError`` when the header lacks ``path`` or ``label``."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: needs a header with 'path' and 'label' columns, got {sorted(rows[0])}")
    return [(path.parent / r["path"], r["label"].strip().lower()) for r in rows
            if r["label"].strip() and (split is None or r.get("split") == split)]


def missing_cell_sets(root, names: tuple[str, ...] = ("bccd", "txl_pbc")) -> str | None:
    """What to run when one of the cell sets ``root/<name>/labels.csv`` (``tools/prepare_cells.py``) is missing;
    None when all are there."""
    for name in names:
        if not (Path(root) / name / "labels.csv").exists():
            return (f"{Path(root) / name / 'labels.csv'} missing; run tools/prepare_cells.py --dataset {name} --out "
                    f"{Path(root) / name}")
    return None


def load_samples(task: str, split: str, sources: list[str] | None = None,
                 cell_sets: dict[str, str] | None = None) -> list[tuple[Path, str]]:
    """Samples ``(image path, class name)`` of ``task`` in ``split`` (train / val / test).

    ``sources`` restricts the datasets (``pbc``, ``lmu_aml``); default: every source the task uses. ``cell_sets``
    (fine13 only): ``{name: labels.csv}`` with a ``split`` column, added to them.
    """
    classes = set(check_task(task))
    out = []
    if task == "fine13":
        classes |= set(COARSE_LABELS)
        sources = ["pbc", "lmu_aml"] if sources is None else sources
        if "pbc" in sources:
            root, rows = _manifest("pbc")
            out += [(root / r["path"], r["fine_label"]) for r in rows if r["split"] == split]
        if "lmu_aml" in sources:
            root, rows = _manifest("lmu_aml")
            out += [(root / r["path"], r["label"]) for r in rows if r["split"] == split]
        for name, csv_path in (cell_sets or {}).items():

            p = resolve_path(csv_path)
            if not p.exists():
                raise FileNotFoundError(f"cell set {name}: {p} not found (make it with tools/prepare_cells.py)")
            out += load_label_csv(p, split)
        cell_sets = None
    if task == "pbc8":
        sources = sources or ["pbc"]
        if "pbc" in sources:
            root, rows = _manifest("pbc")
            out += [(root / r["path"], r["class8"]) for r in rows if r["split"] == split]
    elif task == "wang11":
        sources = sources or ["pbc", "lmu_aml"]
        if "pbc" in sources:
            root, rows = _manifest("pbc")
            out += [(root / r["path"], PBC_FINE_TO_WANG11[r["fine_label"]]) for r in rows
                    if r["split"] == split and r["fine_label"] in PBC_FINE_TO_WANG11]
        if "lmu_aml" in sources:
            root, rows = _manifest("lmu_aml")
            out += [(root / r["path"], LMU_TO_WANG11[r["label"]]) for r in rows if r["split"] == split]
    elif task != "fine13":
        raise FileNotFoundError(f"no public training data for task '{task}' here; train it on your own images with "
                                "a folder-per-class dataset (--data-dir)")
    if cell_sets:
        raise ValueError(f"cell_sets are for task fine13, not {task}")
    bad = {lab for _, lab in out if lab not in classes}
    assert not bad, f"labels outside the taxonomy: {bad}"
    return out


def load_folder_samples(root: Path, classes: list[str]) -> list[tuple[Path, str]]:
    """Samples from a folder-per-class layout ``root/<class>/*.jpg`` (classes outside ``classes`` are an error)."""
    root = Path(root)
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name not in classes:
            raise ValueError(f"{d}: folder name is not a class of the taxonomy {classes}")
        out += [(p, d.name) for p in sorted(d.iterdir()) if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp",
                                                                                  ".tif", ".tiff"}]
    return out


def load_array(samples: list[tuple[Path, str]], classes: list[str], size: int, progress: bool = False):
    """Decode, pad to square and resize every sample once: ``(uint8 N x size x size x 3 RGB, int64 labels)``;
    a label is its index in ``classes`` (for fine13: ``train_labels``, the classes then the coarse labels)."""
    import numpy as np


    x = np.empty((len(samples), size, size, 3), np.uint8)
    y = np.array([classes.index(lab) for _, lab in samples], np.int64)
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc=f"decode {size}px", unit="img", mininterval=2)
    for i, (p, _) in enumerate(it):
        x[i] = square_resize(read_image(p), size)
    return x, y


SOURCES = ("pbc", "lmu_aml", "bccd", "txl_pbc")


def source_of(path: Path) -> str | None:
    """Laboratory a sample comes from (``SOURCES``: a folder of that name in its path, e.g. ../shared/data/pbc/ or
    runs/cells/bccd/), None when unknown."""
    parts = Path(path).parts
    for name in SOURCES:
        if name in parts:
            return name
    return None


def harmonized_array(samples: list[tuple[Path, str]], classes: list[str], size: int, source: str, reference: str):
    """Copies of the ``source`` samples made to look like ``reference`` (its train images' Lab statistics and the
    magnification ratio ``zoom_between(source, reference)``), at ``size``: ``(uint8 N x size x size x 3, labels)``."""
    import numpy as np


    mean, std = reference_stats([p for p, _ in load_samples("pbc8" if reference == "pbc" else "wang11", "train",
                                                            [reference])])
    picked = [(p, lab) for p, lab in samples if source_of(p) == source]
    x = np.empty((len(picked), size, size, 3), np.uint8)
    for i, (p, _) in enumerate(picked):
        x[i] = square_resize(harmonize(read_image(p), mean, std, zoom_between(source, reference)), size)
    return x, np.array([classes.index(lab) for _, lab in picked], np.int64)
