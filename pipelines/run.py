"""The orchestrator: fields in, ``fields.jsonl`` + per-smear reports + ``summary.json`` out.

Streaming: images are decoded in a thread pool one batch ahead of inference, each field's record is written (one
``write`` of one line, flushed; fsync per batch) as soon as its batch is done, and reports are built afterwards by
re-reading ``fields.jsonl``, so memory stays flat however many fields a run has. ``resume`` drops a half-written last
line and skips every field already recorded, so a run killed at any moment ends with each field exactly once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classification.cam import overlay
from core.io import ImageReadError, read_image, safe_name, square_resize, write_image
from detection import field_warnings
from pipelines.inputs import FieldInput
from pipelines.pipeline import Verdict
from pipelines.report import write_reports
from pipelines.results import Cell, FieldResult, to_json


class RunError(RuntimeError):
    """The run cannot start (e.g. its output exists and ``resume`` was not asked)."""


@dataclass
class RunOptions:
    """How to run: output folder, batch size, resume, ``cells_mode`` (each image is one pre-cropped cell),
    saving of all crops / overlays, progress bar, decode threads."""

    out_dir: Path
    batch: int = 8
    resume: bool = False
    cells_mode: bool = False
    save_crops: bool = False
    save_overlays: bool = False
    progress: bool = True
    workers: int = 2
    save_cams: bool = False  # Grad-CAM of each classified cell's final class: DIR/cams/<smear>/, and in the gallery


def repair_jsonl(path: Path) -> set[str]:
    """Truncate a half-written last line of ``fields.jsonl`` and return the paths already recorded."""
    done: set[str] = set()
    if not path.exists():
        return done
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
        good = 0
        for line in data[:end].splitlines():
            try:
                done.add(json.loads(line)["path"])
                good += len(line) + 1
            except (ValueError, KeyError):
                f.truncate(good)  # a corrupt line: keep what precedes it, redo the rest
                break
    return done


def decode_field(fi: FieldInput):
    """``(image or None, error or None, ms)`` for one input: never raises."""
    t0 = time.perf_counter()
    try:
        img, err = read_image(fi.path), None
    except ImageReadError as e:
        img, err = None, str(e)
    except Exception as e:  # noqa: BLE001 - a field's failure must not stop the run
        img, err = None, f"cannot read image: {type(e).__name__}: {e}"
    return img, err, (time.perf_counter() - t0) * 1000


class _CropSink:
    """Writes cell crops: a capped gallery per smear and class for the report, and optionally every crop."""

    def __init__(self, out_dir: Path, per_class: int, save_all: bool):
        self.out_dir, self.per_class, self.save_all = out_dir, per_class, save_all
        self.counts: dict[Path, int] = {}

    def add(self, smear: str, field_id: str, i: int, label: str, crop: np.ndarray,
            cam: np.ndarray | None = None) -> None:
        """One cell's crop (and Grad-CAM map, written as ``cams/<smear>/<field>_<i>.png``, 8-bit, the crop's size,
        and beside its gallery crop as ``<name>.cam.jpg``)."""
        name = f"{Path(field_id).name}_{i:03d}.jpg"
        safe = safe_name(smear)
        if cam is not None:
            import cv2

            d = self.out_dir / "cams" / safe
            d.mkdir(parents=True, exist_ok=True)
            h, w = crop.shape[:2]
            cv2.imwrite(str(d / f"{Path(field_id).name}_{i:03d}.png"), (cv2.resize(cam, (w, h)) * 255).astype(np.uint8))
        if self.per_class > 0:
            d = self.out_dir / "smears" / safe / "gallery" / safe_name(label)
            if d not in self.counts:
                self.counts[d] = len([p for p in d.glob("*.jpg") if not p.name.endswith(".cam.jpg")]) \
                    if d.exists() else 0
            if self.counts[d] < self.per_class:
                d.mkdir(parents=True, exist_ok=True)
                small = square_resize(crop, 96)
                write_image(d / name, small, quality=85)
                if cam is not None:
                    write_image(d / name.replace(".jpg", ".cam.jpg"), overlay(small, cam), quality=85)
                self.counts[d] += 1
        if self.save_all:
            d = self.out_dir / "crops" / safe / safe_name(label)
            d.mkdir(parents=True, exist_ok=True)
            write_image(d / name, crop, quality=92)


def draw_overlay(image: np.ndarray, cells: list[Cell]) -> np.ndarray:
    """Boxes and final labels drawn on a copy of the field (WBC blue, RBC red, platelets green)."""
    import cv2

    colors = {"WBC": (40, 90, 230), "RBC": (220, 50, 50), "Platelets": (30, 160, 60)}
    out = image.copy()
    for c in cells:
        x1, y1, x2, y2 = (int(round(v)) for v in c.box)
        col = colors.get(c.det_label, (120, 120, 120))
        cv2.rectangle(out, (x1, y1), (x2, y2), col, 2)
        if c.det_label not in ("RBC",):
            cv2.putText(out, f"{c.label} {c.score:.2f}", (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        col, 1, cv2.LINE_AA)
    return out


def run(fields: list[FieldInput], pipeline, opts: RunOptions, log=None, engine=None) -> dict:
    """Process ``fields`` with ``pipeline`` (``pipelines.pipeline.Pipeline``) into ``opts.out_dir``; returns the
    run summary (also written to ``summary.json``).

    ``engine``: None runs here (decoding threads one batch ahead of inference); otherwise a callable
    ``engine(todo, sink) -> iterator of (fields in the batch, FieldResults)`` that runs the same per-batch work
    elsewhere (``pipelines.ray_engine``). Either way this driver owns ``fields.jsonl`` (appended and synced per
    batch, so ``--resume`` after a kill ends with every field exactly once), the crops, reports and summary."""

    log = log or (lambda m: print(m, file=sys.stderr))
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "fields.jsonl"
    if jsonl.exists() and jsonl.stat().st_size > 0 and not opts.resume:
        raise RunError(f"{jsonl} already exists: pass --resume to continue that run, or choose another --out")
    done = repair_jsonl(jsonl) if opts.resume else set()
    todo = [f for f in fields if str(f.path) not in done]
    if done:
        log(f"resume: {len(fields) - len(todo)} of {len(fields)} fields already done")
    sink = _CropSink(out, pipeline.cfg["gallery_per_class"], opts.save_crops)
    t_start = time.perf_counter()
    n_ok = n_err = n_cells = 0
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="field", desc="fields", mininterval=1.0, file=sys.stderr)
    produce = engine or (lambda todo_, sink_: local_batches(todo_, pipeline, opts, sink_))
    with open(jsonl, "a", encoding="utf-8") as fout:
        for batch, results in produce(todo, sink):
            for r in results:
                fout.write(to_json(r) + "\n")
                n_ok += r.error is None
                n_err += r.error is not None
                n_cells += len(r.cells)
            fout.flush()
            os.fsync(fout.fileno())
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(cells=n_cells, failed=n_err, refresh=False)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start
    reports = write_reports(out, pipeline.cfg)
    summary = {"fields_total": reports["fields_total"], "fields_ok": reports["fields_ok"],
               "fields_failed": reports["fields_failed"], "cells": reports["cells"], "smears": reports["smears"],
               "this_run": {"fields_processed": len(todo), "fields_ok": n_ok, "fields_failed": n_err,
                            "cells": n_cells, "wall_s": round(wall, 3),
                            "fields_per_s": round(len(todo) / wall, 3) if wall > 0 and todo else None,
                            "resumed_skipped": len(fields) - len(todo)},
               "mode": "cells" if opts.cells_mode else "fields", "batch": opts.batch,
               "engine": getattr(engine, "name", "local"),
               "versions": pipeline.versions, "skipped_stages": pipeline.skipped}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def local_batches(todo: list[FieldInput], pipeline, opts: RunOptions, sink):
    """The local engine: batches of ``opts.batch`` fields, decoded in ``opts.workers`` threads one batch ahead;
    yields ``(batch, FieldResults)``."""
    batches = [todo[i:i + opts.batch] for i in range(0, len(todo), max(1, opts.batch))]
    with ThreadPoolExecutor(max(1, opts.workers)) as pool:
        pending = [pool.submit(decode_field, f) for f in batches[0]] if batches else []
        for bi, batch in enumerate(batches):
            decoded = [p.result() for p in pending]
            pending = [pool.submit(decode_field, f) for f in batches[bi + 1]] if bi + 1 < len(batches) else []
            yield batch, process_batch(batch, decoded, pipeline, opts, sink)


def process_batch(batch, decoded, pipeline, opts, sink) -> list[FieldResult]:
    """One batch's work, whatever the engine: ``decoded`` = per field ``(image or None, error or None, decode ms)``;
    failing fields are isolated (their records say why); crops go to ``sink.add``; returns the FieldResults."""
    ok = [(f, img, ms) for f, (img, err, ms) in zip(batch, decoded) if err is None]
    errors = {f.field_id: err for f, (img, err, ms) in zip(batch, decoded) if err is not None}
    if ok:
        try:
            done = _infer(ok, pipeline, opts)
        except Exception as e:  # noqa: BLE001 - isolate the failing field instead of losing the batch
            if len(ok) == 1:
                errors[ok[0][0].field_id] = f"processing failed: {type(e).__name__}: {e}"
                done = {}
            else:
                done = {}
                for item in ok:
                    try:
                        done.update(_infer([item], pipeline, opts))
                    except Exception as e1:  # noqa: BLE001
                        errors[item[0].field_id] = f"processing failed: {type(e1).__name__}: {e1}"
    else:
        done = {}
    results = []
    for f, (img, err, ms) in zip(batch, decoded):
        if f.field_id in done:
            res, crops = done[f.field_id]
            for i, c in enumerate(res.cells):
                if i in crops:
                    sink.add(f.smear_id, f.field_id, i, c.label, *crops[i])
            if opts.save_overlays and not opts.cells_mode:

                d = Path(opts.out_dir) / "overlays" / safe_name(f.smear_id)
                d.mkdir(parents=True, exist_ok=True)
                write_image(d / f"{Path(f.field_id).name}.jpg", draw_overlay(img, res.cells), quality=88)
            results.append(res)
        else:
            h, w = (img.shape[:2] if img is not None else (None, None))
            results.append(FieldResult(f.field_id, str(f.path), f.smear_id, w, h, [], {"decode": round(ms, 2)},
                                       errors.get(f.field_id, "not processed"), dict(pipeline.versions)))
    return results


def _infer(items, pipeline, opts) -> dict[str, tuple[FieldResult, dict[int, tuple]]]:
    """Detect, crop and classify a batch of decoded fields; returns per field id its result and, per classified
    cell index, ``(crop, Grad-CAM map or None)``."""
    n = len(items)
    images = [img for _, img, _ in items]
    dets = [None] * n
    if opts.cells_mode:
        det_ms = 0.0
        per_field = []
        t0 = time.perf_counter()
        if pipeline.cfg["cells_reframe"]:  # the detector finds the leukocyte; it is cropped as field cells are
            for box, score, crop in pipeline.reframe_cells(images):
                per_field.append(([Cell(box, "WBC", score, "WBC", score)], [crop], [0]))
        else:
            for img in images:
                h, w = img.shape[:2]
                per_field.append(([Cell([0.0, 0.0, float(w), float(h)], "WBC", 1.0, "WBC", 1.0)], [img], [0]))
        crop_ms = [(time.perf_counter() - t0) * 1000 / n] * n
    else:
        t0 = time.perf_counter()
        dets = pipeline.detector.detect(images)
        det_ms = (time.perf_counter() - t0) * 1000
        per_field, crop_ms = [], []
        for img, det in zip(images, dets):
            t1 = time.perf_counter()
            per_field.append(pipeline.cells_from_detections(img, det))
            crop_ms.append((time.perf_counter() - t1) * 1000)
    all_crops = [c for _, crops, idx in per_field for c in (crops if idx else [])]
    verdicts, cls_ms = pipeline.classify(all_crops) if all_crops and pipeline.stages else \
        ([Verdict(None, None, {})] * len(all_crops), 0.0)
    cams = pipeline.grad_cams(all_crops, verdicts) if opts.save_cams and all_crops else [None] * len(all_crops)
    out, v = {}, 0
    for (f, img, dec_ms), (cells, crops, idx), cms, det in zip(items, per_field, crop_ms, dets):
        crop_by_cell = {}
        for j, ci in enumerate(idx):
            vd, cam = verdicts[v], cams[v]
            v += 1
            c = cells[ci]
            if vd.label is not None:
                cells[ci] = Cell(c.box, c.det_label, c.det_score, vd.label, vd.score, vd.classes, vd.ood)
            crop_by_cell[ci] = (crops[j], cam)
        h, w = img.shape[:2]
        timings = {"decode": round(dec_ms, 2), "detect": round(det_ms / n, 2), "crop": round(cms, 2),
                   "classify": round(cls_ms / n, 2)}
        rescaled = None  # auto_scale detected this field again at a larger input size
        warnings = []
        if det is not None:
            if det.imgsz and det.imgsz != getattr(pipeline.detector, "imgsz", det.imgsz):
                rescaled = int(det.imgsz)
            if pipeline.cfg["detector_cfg"]["field_checks"]:
                warnings = field_warnings(det, (h, w), pipeline.cfg["detector_cfg"])
        out[f.field_id] = (FieldResult(f.field_id, str(f.path), f.smear_id, w, h, cells, timings, None,
                                       dict(pipeline.versions), rescaled, warnings), crop_by_cell)
    return out
