"""The models of one pipeline config: a detector and a cascade of classifiers, applied to batches of images.

Cascade: stages run in config order on the crops of cells whose detector label is in ``classify_labels``; a stage
with ``when`` only sees cells whose current label is in that list. A later stage's verdict replaces the current one
when it refines it (``segmented_neutrophil`` refines ``neutrophil``, ``covid_rl`` refines ``lymphocyte``) or is more
confident; the cell's final ``label`` is that verdict, or ``unidentified`` when its probability is under the deciding
classifier's ``min_confidence``, or ``unfamiliar`` when the cell's familiarity score (``ood``, of the first stage
whose classifier has one: ``classification.ood``) is above that stage's ``ood_threshold``. Every stage that saw a
cell leaves its own entry in ``cell.classes``.

Views: a classifier of a fine label space (``fine13``) writes one entry per taxonomy it gives as a view (pbc8 and
wang11, ``classification.taxonomies.view_probs``); its verdict in the cascade is its top fine class, or, when that
is below ``min_confidence``, the first view's class whose summed probability reaches it (band 0.45 + segmented
0.40: ``neutrophil`` 0.85), else the top fine class (then ``unidentified``).

Fusion: a stage with ``fuse_into: TASK`` also votes on an earlier stage's verdict: on the cells both saw, that
stage's entry becomes the product of experts of the two (``classification.classifier.fuse_probs``: wang11's
probabilities summed onto the pbc8 classes they refine). The run's ``versions`` say which entries are fused.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from classification.cam import grad_cam
from classification.classifier import (Classifier, check_classifier_config, fuse_probs, load_classifier,
                                       preprocess_key, refinement_map, resize_crops)
from classification.taxonomies import (UNFAMILIAR, UNIDENTIFIED, check_task, label_sets, refines, view_matrix,
                                       view_probs)
from core.config import REQUIRED, ConfigError, Field, load_yaml, resolve_path, validate
from core.onnxrt import RUNTIMES
from detection import build_detector, check_detector_config
from pipelines.crop import background_colour, crop_square
from pipelines.differential import DIFFERENTIAL_SCHEMA
from pipelines.results import Cell, TaskResult

PIPELINE_SCHEMA = {
    "detector": Field(str, REQUIRED, "detector config (configs/detector/*.yaml)"),
    "detector_conf": Field(float, None, "override the detector config's score threshold (e.g. 0.001 to measure AP)",
                           min=0.0, max=1.0),
    "classifiers": Field(list, [], "cascade stages in order; each a mapping, see STAGE_SCHEMA"),
    "classify_labels": Field(list, ["WBC"], "detector labels whose crops go to the classifiers"),
    "keep_labels": Field(list, ["WBC", "RBC", "Platelets"], "detector labels written to the output"),
    "crop_margin": Field(float, 0.75, "crop = square of the box's longest side * (1 + 2 * margin); 0.75 frames the "
                                      "cell like the PBC (CellaVision) images the classifiers learn from",
                         min=0.0, max=5.0),
    "gallery_per_class": Field(int, 12, "cell crops kept per smear and class for the report's gallery", min=0),
    "cells_reframe": Field(bool, False, "--cells: find the leukocyte in each pre-cropped image with the detector "
                                        "and crop it at crop_margin, as field crops are framed (Pipeline."
                                        "reframe_cells). Off by default: on PBC test it cost 0.8 points pbc8 "
                                        "accuracy and on tightly framed copies it gained nothing (training zooms "
                                        "cells 0.8-1.8x); for exports framed wide or off-centre"),
    "differential": Field(dict, {}, "report settings, see pipelines.differential.DIFFERENTIAL_SCHEMA"),
    "onnx_runtime": Field(str, "onnxruntime", "what runs the .onnx models of the detector and classifiers on the "
                                              "CPU: onnxruntime or openvino (same files, same outputs; openvino "
                                              "1.5-2x faster on x86, docs/RESULTS.md), openvino_bf16 (bfloat16 on "
                                              "CPUs that have it: faster, other outputs); .pt weights run in PyTorch",
                          choices=RUNTIMES),
}

STAGE_SCHEMA = {
    "config": Field(str, REQUIRED, "classifier config (configs/classifier/*.yaml)"),
    "when": Field(list, None, "run only on cells whose current label is one of these; None = every crop"),
    "optional": Field(bool, False, "skip this stage (with a note) when its weights file does not exist"),
    "weights": Field(str, None, "override the classifier config's weights"),
    "tta": Field(int, None, "override the classifier config's tta (test-time views: 1, 2, 4, 8)", choices=(1, 2, 4, 8)),
    "tta_below": Field(float, None, "override the classifier config's tta_below", min=0.0, max=1.0),
    "white_balance": Field(list, None, "override the classifier config's white_balance (reference background white "
                                       "[R, G, B] of the crops)", min=1.0, max=255.0, size=3),
    "fuse_into": Field(str, None, "task of an earlier stage whose verdict this stage's probabilities join "
                                  "(classification.classifier.fuse_probs), e.g. wang11 into pbc8"),
    "fuse_weight": Field(float, 1.0, "weight of this stage's vote in fuse_into (0 = none, 1 = plain product)",
                         min=0.0),
    "ood_threshold": Field(float, None, "familiarity score above which a cell's final label is 'unfamiliar' (None = "
                                        "the checkpoint's, fitted by tools/fit_familiarity.py; a large value turns "
                                        "the rule off); only for classifiers with a fitted score"),
}



def load_pipeline_config(path) -> dict:
    """Read and validate a pipeline YAML, its stages and the configs they name."""

    cfg = validate(load_yaml(path), PIPELINE_SCHEMA, str(path))
    det_raw = load_yaml(resolve_path(cfg["detector"]))
    if det_raw.get("runtime", cfg["onnx_runtime"]) != cfg["onnx_runtime"]:
        raise ConfigError(f"{path}: the detector config {cfg['detector']} sets runtime '{det_raw['runtime']}', the "
                          f"pipeline's onnx_runtime is '{cfg['onnx_runtime']}': set it once, in the pipeline config")
    cfg["detector_cfg"] = check_detector_config({**det_raw, "runtime": cfg["onnx_runtime"]}, cfg["detector"])
    if cfg["detector_conf"] is not None:
        cfg["detector_cfg"]["conf"] = cfg["detector_conf"]
    stages = []
    for i, st in enumerate(cfg["classifiers"]):
        if not isinstance(st, dict):
            raise ConfigError(f"{path}: classifiers[{i}] must be a mapping with at least 'config'")
        st = validate(st, STAGE_SCHEMA, f"{path}: classifiers[{i}]")
        st["cfg"] = check_classifier_config(load_yaml(resolve_path(st["config"])), st["config"])
        for key in ("weights", "tta", "tta_below", "white_balance"):
            if st[key] is not None:
                st["cfg"][key] = st[key]
        if st["fuse_into"] is not None:
            check_fusion(st, stages, f"{path}: classifiers[{i}]")
        stages.append(st)
    cfg["classifiers"] = stages
    cfg["differential"] = validate(cfg["differential"], DIFFERENTIAL_SCHEMA, f"{path}: differential")
    return cfg


def check_fusion(st: dict, earlier: list[dict], where: str) -> None:
    """Raise ``ConfigError`` unless ``st['fuse_into']`` names an earlier stage's task that shares classes with it."""

    tasks = [e["cfg"]["task"] for e in earlier]
    if st["fuse_into"] not in tasks:
        raise ConfigError(f"{where}: fuse_into '{st['fuse_into']}' is not the task of an earlier stage ({tasks})")
    if not refinement_map(check_task(st["cfg"]["task"]), check_task(st["fuse_into"])).any():
        raise ConfigError(f"{where}: no class of {st['cfg']['task']} is or refines a class of {st['fuse_into']}: "
                          "nothing to fuse")


@dataclass
class Stage:
    """A loaded cascade stage."""

    task: str
    classifier: object
    when: set | None
    min_confidence: float
    fuse_into: str | None = None
    fuse_weight: float = 1.0
    ood_threshold: float | None = None  # None: no familiarity score (the classifier has none)


REFRAME_MIN_SCORE = 0.1  # a pre-cropped image's leukocyte detection used to reframe it


class Verdict(NamedTuple):
    """The cascade's result for one crop: final ``label`` (``unidentified`` / ``unfamiliar`` by the rules) and
    ``score``, per-task ``classes`` (``TaskResult``), and the familiarity score ``ood`` of the first stage that has
    one (None otherwise). ``label`` and ``score`` are None for a crop no stage saw."""

    label: str | None
    score: float | None
    classes: dict
    ood: float | None = None


def _task_result(classes: list[str], p: np.ndarray) -> TaskResult:
    k = int(p.argmax())
    return TaskResult(classes[k], round(float(p[k]), 4), {c: round(float(v), 4) for c, v in zip(classes, p)})


class Pipeline:
    """Detector + classifier cascade built from a validated pipeline config (``load_pipeline_config``)."""

    def __init__(self, cfg: dict, device: str = "cpu", half: bool = False, log=None):
        import torch


        log = log or (lambda m: print(m, file=sys.stderr))
        self.cfg = cfg
        self._detector = None
        self.device = device
        self.half = half
        self.stages: list[Stage] = []
        self.skipped: list[str] = []
        for st in cfg["classifiers"]:
            c = st["cfg"]
            w = resolve_path(c["weights"])
            if w is None or not w.exists():
                if st["optional"]:
                    self.skipped.append(f"{c['task']}: no weights at {w}")
                    log(f"note: classifier stage {c['task']} skipped (no weights at {w})")
                    continue
                raise FileNotFoundError(f"classifier weights not found for {c['task']}: {w} (mark the stage "
                                        "'optional: true' to run without it)")
            clf = load_classifier(w, device=device, batch=c["batch"], half=half, tta=c["tta"],
                                  tta_below=c["tta_below"], white_balance=c["white_balance"],
                                  runtime=cfg["onnx_runtime"])
            fuse = st["fuse_into"]
            if fuse is not None and fuse not in {s.task for s in self.stages}:
                self.skipped.append(f"{clf.task} -> {fuse} fusion: no {fuse} stage")
                log(f"note: {clf.task} not fused into {fuse} (that stage was skipped)")
                fuse = None
            thr = None
            if clf.has_ood:
                thr = st["ood_threshold"] if st["ood_threshold"] is not None else float(clf.meta["ood"]["threshold"])
            self.stages.append(Stage(clf.task, clf, set(st["when"]) if st["when"] else None, c["min_confidence"],
                                     fuse, st["fuse_weight"], thr))
        from importlib.metadata import PackageNotFoundError, version

        try:
            own = version("leukodiff")
        except PackageNotFoundError:
            own = "dev"
        self.versions = {"leukodiff": own, "torch": torch.__version__,
                         **{s.task: s.classifier.name for s in self.stages}}
        for s in self.stages:
            for view in s.classifier.views:
                self.versions[view] = f"{s.classifier.name} ({view} view)"
        for s in self.stages:
            if s.fuse_into:
                self.versions[s.fuse_into] += f" + {s.task} fused (weight {s.fuse_weight:g})"
        det_cfg = {**cfg["detector_cfg"], "half": cfg["detector_cfg"]["half"] or half}  # --half reaches it too
        self._build_detector = lambda: build_detector(det_cfg, device)

    @property
    def detector(self):
        """The detector, built on first use (``--cells`` runs never load it)."""
        if self._detector is None:
            self._detector = self._build_detector()
            self.versions["detector"] = self._detector.name
        return self._detector

    def classify(self, crops: list[np.ndarray]) -> tuple[list[Verdict], float]:
        """Run the cascade on crops. Returns a ``Verdict`` per crop and the ms spent."""
        t0 = time.perf_counter()
        n = len(crops)
        current: list[tuple[str, float, float] | None] = [None] * n  # (label, score, min_confidence)
        per_cell: list[dict] = [{} for _ in range(n)]
        raw: list[dict] = [{} for _ in range(n)]  # task -> unrounded probabilities, for fusion
        prepared: dict[tuple, np.ndarray] = {}
        resized: dict[int, np.ndarray] = {}

        stage_of = {st.task: st for st in self.stages}
        seen: list[list[Stage]] = [[] for _ in range(n)]  # the stages that classified each cell, in order
        familiar: dict[int, tuple[float, float]] = {}  # cell -> (ood score, threshold) of its first scoring stage
        fine_top: list[dict] = [{} for _ in range(n)]  # task -> (top class, probability) of view classifiers

        def verdict(i: int) -> tuple[str, float, float]:  # the cascade's current (label, score, min_confidence)
            cur = None
            for st in seen[i]:
                label, score = fine_top[i][st.task] if st.task in fine_top[i] else \
                    (per_cell[i][st.task].label, per_cell[i][st.task].score)
                if cur is None or refines(label, cur[0]) or score > cur[1]:
                    cur = (label, score, st.min_confidence)
            return cur

        for st in self.stages:
            idx = [i for i in range(n) if st.when is None or (current[i] is not None and current[i][0] in st.when)]
            if not idx:
                continue
            clf = st.classifier
            key = preprocess_key(clf)
            if key not in prepared:  # one resize per input size, one stain normalization per reference
                size = clf.input_size
                if size not in resized:
                    resized[size] = resize_crops(crops, size)
                prepared[key] = clf.prepare_resized(resized[size])
            probs, ood = clf.classify_prepared(prepared[key][idx], with_ood=True)
            if ood is not None:
                for j, i in enumerate(idx):
                    if i not in familiar:
                        familiar[i] = (round(float(ood[j]), 4), st.ood_threshold)
            views = clf.views
            if views:  # one network, several taxonomies: an entry per view, its own top fine class decides
                for view, vclasses in views.items():
                    vp = view_probs(probs, clf.classes, vclasses)
                    for j, i in enumerate(idx):
                        per_cell[i][view], raw[i][view] = _task_result(vclasses, vp[j]), vp[j]
                coarse = {v: probs.astype(np.float64) @ view_matrix(clf.classes, vc) for v, vc in views.items()}
                for j, i in enumerate(idx):
                    k = int(probs[j].argmax())
                    top = (clf.classes[k], float(probs[j][k]))
                    if top[1] < st.min_confidence:  # unsure between fine classes: a view's class may be sure
                        for v, vc in views.items():  # (band 0.45 + segmented 0.40 = neutrophil 0.85)
                            kv = int(coarse[v][j].argmax())
                            if coarse[v][j][kv] >= st.min_confidence:
                                top = (vc[kv], float(coarse[v][j][kv]))
                                break
                    fine_top[i][st.task] = (top[0], round(top[1], 4))
            else:
                for j, i in enumerate(idx):
                    per_cell[i][st.task], raw[i][st.task] = _task_result(clf.classes, probs[j]), probs[j]
            for i in idx:
                seen[i].append(st)
            if st.fuse_into:  # this stage's vote joins an earlier stage's verdict on the cells both saw
                tgt = stage_of[st.fuse_into].classifier
                both = [j for j, i in enumerate(idx) if st.fuse_into in raw[i]]
                if both:
                    own = np.stack([raw[idx[j]][st.fuse_into] for j in both])
                    fused = fuse_probs(own, tgt.classes, probs[both], clf.classes, st.fuse_weight)
                    for j, p in zip(both, fused):
                        per_cell[idx[j]][st.fuse_into] = _task_result(tgt.classes, p)
            for i in idx:
                current[i] = verdict(i)
        out = []
        for i in range(n):
            ood, thr = familiar.get(i, (None, None))
            if current[i] is None:
                out.append(Verdict(None, None, per_cell[i], ood))
                continue
            label, score, minc = current[i]
            if ood is not None and ood > thr:
                label = UNFAMILIAR
            elif score < minc:
                label = UNIDENTIFIED
            out.append(Verdict(label, round(score, 4), per_cell[i], ood))
        return out, (time.perf_counter() - t0) * 1000

    def cam_classifier(self):
        """The PyTorch network of the first cascade stage (Grad-CAM needs gradients: an ONNX stage's ``.pt`` source
        beside it), built once; None when there is none."""
        if not hasattr(self, "_cam_clf"):
            self._cam_clf = None
            if self.stages:
                clf = self.stages[0].classifier
                if hasattr(clf, "model"):
                    self._cam_clf = clf
                else:
                    pt = clf.path.with_name(clf.meta.get("source", clf.path.with_suffix(".pt").name))
                    if pt.exists():
                        self._cam_clf = Classifier(pt, device=self.device)
                        self._cam_clf.white_reference = clf.white_reference  # the same input as the stage's
        return self._cam_clf

    def grad_cams(self, crops: list[np.ndarray], verdicts: list[Verdict]) -> list[np.ndarray | None]:
        """Grad-CAM map (S x S float32 in [0, 1], the first stage's input size) of each crop's final class
        (``classification.cam``; the top class where the final label is ``unidentified`` / ``unfamiliar`` or not one
        of that network's); None for crops no stage classified, all None without a PyTorch network."""
        clf = self.cam_classifier()
        idx = [i for i, v in enumerate(verdicts) if v.label is not None]
        out: list[np.ndarray | None] = [None] * len(crops)
        if clf is None or not idx:
            return out
        x = clf.preprocess([crops[i] for i in idx])
        top = clf.classify_prepared(x).argmax(1)
        def target(label: str, k: int) -> np.ndarray:  # the classes the final label allows, else the top class
            try:
                return label_sets([label], clf.classes)[0]
            except ValueError:  # unidentified, unfamiliar, or a label of another stage (covid_rl)
                return label_sets([clf.classes[k]], clf.classes)[0]

        allowed = np.stack([target(verdicts[i].label, t) for i, t in zip(idx, top)])
        for i, m in zip(idx, grad_cam(clf.model, x, allowed, clf.meta["mean"], clf.meta["std"])):
            out[i] = m
        return out

    def reframe_cells(self, images: list[np.ndarray]) -> list[tuple[list[float], float, np.ndarray]]:
        """Pre-cropped cell images framed as field crops are (``cells_reframe``): the detector's leukocyte box
        nearest the image centre (score >= ``REFRAME_MIN_SCORE``) is cropped at ``crop_margin`` (beyond the image:
        its median colour), so that an export framing its cells tightly (other labs: cells fill 45-70% of the
        image, PBC's 30%) reaches the classifiers framed like the training cells. Per image ``(box, score,
        crop)``; without such a box the whole image (``score`` 1.0)."""
        out = []
        dets = [d for i in range(0, len(images), 16) for d in self.detector.detect(images[i:i + 16])]
        for img, det in zip(images, dets):
            h, w = img.shape[:2]
            best = None
            for box, score, label in zip(det.xyxy, det.scores, det.labels):
                if label != "WBC" or score < REFRAME_MIN_SCORE:
                    continue
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                d = ((cx - w / 2) / w) ** 2 + ((cy - h / 2) / h) ** 2 - float(score) * 1e-3
                if best is None or d < best[0]:
                    best = (d, [round(float(v), 1) for v in box], round(float(score), 4))
            if best is None:
                out.append(([0.0, 0.0, float(w), float(h)], 1.0, img))
            else:
                out.append((best[1], best[2], crop_square(img, best[1], self.cfg["crop_margin"])))
        return out

    def cells_from_detections(self, image: np.ndarray, det) -> tuple[list[Cell], list[np.ndarray], list[int]]:
        """Detections -> unclassified cells (kept labels only), the crops of those in ``classify_labels`` (for the
        classifiers and the report's gallery) and their indices."""

        keep, to_classify = set(self.cfg["keep_labels"]), set(self.cfg["classify_labels"])
        cells, crops, idx = [], [], []
        fill = background_colour(image) if any(lab in to_classify for lab in det.labels) else None
        for box, score, label in zip(det.xyxy, det.scores, det.labels):
            if label not in keep:
                continue
            if label in to_classify:
                idx.append(len(cells))
                crops.append(crop_square(image, box, self.cfg["crop_margin"], fill))
            cells.append(Cell([round(float(v), 1) for v in box], label, round(float(score), 4), label,
                              round(float(score), 4)))
        return cells, crops, idx
