"""Typed results, plain and JSON-able (``dataclasses.asdict``). The JSON contract of ``fields.jsonl`` is these
dataclasses, field for field; it is documented in the README."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TaskResult:
    """One classifier's verdict on a cell: top ``label`` and its probability ``score``, and the full ``probs``."""

    label: str
    score: float
    probs: dict[str, float]


@dataclass(frozen=True)
class Cell:
    """A detected (or pre-cropped) cell.

    ``box``: ``[x1, y1, x2, y2]`` in pixels of the original image. ``det_label`` / ``det_score``: detector class
    (``WBC``, ``RBC``, ``Platelets``) and score. ``label`` / ``score``: the final, finest label (``unidentified``
    when the deciding classifier's top probability is under its ``min_confidence``); for cells no classifier saw,
    the detector's; ``unfamiliar`` when ``ood`` is above the classifier's threshold. ``classes``: per task that saw
    the cell (``pbc8``, ``wang11``, ``covid_rl``). ``ood``: familiarity score of the cell to the training
    laboratories' cells (about 1 for such cells, higher when unlike them; ``classification.ood``), None when no
    classifier with a fitted score saw it.
    """

    box: list[float]
    det_label: str
    det_score: float
    label: str
    score: float
    classes: dict[str, TaskResult] = field(default_factory=dict)
    ood: float | None = None


@dataclass(frozen=True)
class FieldResult:
    """Everything known about one input image. ``cells`` may be empty (a valid result); ``error`` is set, and
    ``cells`` empty, when the image could not be processed. ``timings_ms``: per stage, batch stages amortized over
    the batch's fields. ``rescaled_imgsz``: the detector's input size for this field when its ``auto_scale`` chose
    a larger one than the config's (the field's red cells were small: a lower magnification than the training
    fields); None otherwise. ``warnings``: why the field's detections cannot be trusted
    (``detection.field_warnings``: cells too small even at the largest input, implausible leukocyte boxes); such a
    field is unanalysable: its cells are written but not counted in the smear's differential."""

    field_id: str
    path: str
    smear_id: str
    width: int | None
    height: int | None
    cells: list[Cell] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    rescaled_imgsz: int | None = None  # set when auto_scale detected the field again at this larger input size
    warnings: list[str] = field(default_factory=list)  # why the field is unanalysable (its cells are not counted)


def to_json(result) -> str:
    """One-line JSON of a result dataclass."""
    return json.dumps(dataclasses.asdict(result), separators=(",", ":"), allow_nan=False)


def field_from_dict(d: dict) -> FieldResult:
    """Inverse of ``dataclasses.asdict`` for a ``FieldResult`` read back from ``fields.jsonl``."""
    cells = [Cell(box=c["box"], det_label=c["det_label"], det_score=c["det_score"], label=c["label"], score=c["score"],
                  classes={t: TaskResult(**v) for t, v in c.get("classes", {}).items()}, ood=c.get("ood"))
             for c in d.get("cells", [])]
    return FieldResult(field_id=d["field_id"], path=d["path"], smear_id=d["smear_id"], width=d.get("width"),
                       height=d.get("height"), cells=cells, timings_ms=d.get("timings_ms", {}), error=d.get("error"),
                       versions=d.get("versions", {}), rescaled_imgsz=d.get("rescaled_imgsz"),
                       warnings=d.get("warnings", []))


def read_records(run: str | Path) -> Iterator[dict]:
    """The one reader of ``fields.jsonl``: its records (dicts, the JSON contract above), in file order, from a run
    folder or the file itself; blank lines skipped. Raises ``FileNotFoundError`` naming the file when it is
    missing."""
    path = Path(run)
    if path.is_dir() or not path.name.endswith(".jsonl"):
        path = path / "fields.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run tools/infer_field.py first)")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_results(run: str | Path) -> Iterator[FieldResult]:
    """``read_records`` as ``FieldResult`` objects."""
    for d in read_records(run):
        yield field_from_dict(d)
