"""Detector training from config on a tiny VOC dataset drawn in code: SSD300 and YOLO write loadable weights."""

import numpy as np
import pytest
from PIL import Image

from conftest import write_yaml
from detection import build_detector


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    from pipelines.synthetic import render_field

    root = tmp_path_factory.mktemp("voc")
    (root / "Annotations").mkdir()
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    ids = []
    for i in range(4):
        f = render_field(i, width=320, height=240, n_wbc=1, n_rbc=3, n_platelets=1)
        name = f"img{i}"
        ids.append(name)
        Image.fromarray(f.image).save(root / "JPEGImages" / f"{name}.jpg")
        objs = "".join(f"<object><name>{lab}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                       f"<ymax>{b[3]}</ymax></bndbox></object>" for b, lab in zip(f.boxes, f.labels))
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>320</width><height>240</height>"
            f"<depth>3</depth></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text(ids[3] + "\n")
    card = write_yaml(root / "card.yaml", {"name": "tiny", "format": "voc", "root": str(root),
                                           "classes": ["WBC", "RBC", "Platelets"],
                                           "splits": {"train": "ImageSets/Main/train.txt",
                                                      "val": "ImageSets/Main/val.txt"}})
    return card


@pytest.mark.slow
def test_train_ssd_one_epoch(tiny_voc, tmp_path):
    from tools.train_detector import main as train

    cfg = write_yaml(tmp_path / "ssd.yaml", {
        "backend": "ssd300", "model": "ssd300_vgg16", "weights": str(tmp_path / "ssd.pt"), "imgsz": 300,
        "conf": 0.01, "train": {"data": [f"{tiny_voc}:train"], "val": [f"{tiny_voc}:val"], "epochs": 1, "batch": 2,
                                "lr0": 0.001, "run_dir": str(tmp_path / "run")}})
    assert train(["--config", str(cfg)]) == 0
    assert (tmp_path / "ssd.pt").exists() and (tmp_path / "run" / "ssd_last.pt").exists()
    import yaml

    det = build_detector(yaml.safe_load(cfg.read_text()))
    out = det.detect([np.zeros((240, 320, 3), np.uint8)])
    assert out[0].xyxy.shape[1] == 4
    assert train(["--config", str(cfg), "--resume", "--epochs", "2"]) == 0  # continues from ssd_last.pt


@pytest.mark.slow
def test_train_yolo_one_epoch(tiny_voc, tmp_path):
    from tools.train_detector import main as train

    cfg = write_yaml(tmp_path / "y.yaml", {
        "backend": "yolo", "model": "yolov8n.yaml", "weights": str(tmp_path / "y.pt"), "imgsz": 64, "conf": 0.01,
        "train": {"data": [f"{tiny_voc}:train"], "val": [f"{tiny_voc}:val"], "epochs": 1, "batch": 2,
                  "workers": 0, "run_dir": str(tmp_path / "run")}})
    assert train(["--config", str(cfg)]) == 0
    import yaml

    det = build_detector(yaml.safe_load(cfg.read_text()))
    assert det.classes == ["WBC", "RBC", "Platelets"]
    assert len(det.detect([np.zeros((240, 320, 3), np.uint8)])) == 1
