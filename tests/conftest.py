"""Shared fixtures: tiny models built from config, synthetic fields, the real data root (skips when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Tiny untrained models and configs: a YOLOv8n detector at 64 px that keeps low-score boxes (so fields have
    cells), tiny-CNN pbc8 / wang11 / covid_rl checkpoints at 32 px, and a pipeline config using them."""
    import torch

    from classification.models import build_backbone, save_checkpoint
    from classification.taxonomies import TAXONOMIES

    d = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    ck = {}
    for task in ("pbc8", "wang11", "covid_rl"):
        model = build_backbone("tiny_cnn", len(TAXONOMIES[task]))
        ck[task] = save_checkpoint(d / f"{task}.pt", model, "tiny_cnn", task, TAXONOMIES[task], 32,
                                   (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), temperature=1.0)
        write_yaml(d / f"{task}.yaml", {"task": task, "arch": "tiny_cnn", "weights": str(ck[task]), "input_size": 32,
                                        "min_confidence": 0.0, "batch": 16})
    det = write_yaml(d / "det.yaml", {"backend": "yolo", "model": "yolov8n.yaml", "weights": None,
                                      "classes": ["WBC", "RBC", "Platelets"], "imgsz": 64, "conf": 0.001,
                                      "iou": 0.5, "max_det": 4, "field_checks": False})
    pipe = write_yaml(d / "pipeline.yaml", {
        "detector": str(det),
        "classifiers": [{"config": str(d / "pbc8.yaml")}, {"config": str(d / "wang11.yaml")},
                        {"config": str(d / "covid_rl.yaml"), "when": ["lymphocyte", "reactive_lymphocyte"],
                         "optional": True}],
        "keep_labels": ["WBC", "RBC", "Platelets"],
        "classify_labels": ["WBC", "RBC", "Platelets"],  # untrained detector: classify whatever it finds
        "gallery_per_class": 2,
        "cells_reframe": False,  # an untrained detector finds no leukocyte to reframe
        "differential": {"min_leukocytes": 10}})
    return {"dir": d, "detector": det, "pipeline": pipe, **{f"{k}_ckpt": v for k, v in ck.items()}}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Two smear folders of three synthetic 732x574 fields each (PNG), plus ground_truth.json."""
    from pipelines.synthetic import write_demo_fields

    d = tmp_path_factory.mktemp("fields")
    write_demo_fields(d, n_smears=2, fields_per_smear=3, seed=1)
    return d


@pytest.fixture(scope="session")
def data_root() -> Path:
    """../shared/data, or skip."""
    from core.config import data_root as root

    r = root()
    if not (r / "bccd").exists():
        pytest.skip(f"real data not found at {r} (set LEUKODIFF_DATA or place ../shared/data)")
    return r
