"""Detection: contract, letterbox/decode geometry, NMS, tiny backends built from config, dataset readers."""

import json

import numpy as np
import pytest

from detection import Detections, build_detector, letterbox, rect_canvas
from detection.data import (FieldAnnotation, load_card, read_coco, read_split, read_voc, read_yolo, to_coco,
                            write_yolo_dataset)
from detection.yolo import decode, nms
from core.config import ConfigError


def test_letterbox_and_decode_map_back_to_original_pixels():
    img = np.zeros((480, 640, 3), np.uint8)
    canvas, scale, (left, top) = letterbox(img, 320)
    assert canvas.shape == (320, 320, 3) and scale == pytest.approx(0.5) and (left, top) == (0, 40)
    # one anchor predicting box (100, 50)-(300, 250) of the original, class 1 with score 0.9
    x1, y1, x2, y2 = np.array([100, 50, 300, 250]) * scale + [left, top, left, top]
    raw = np.zeros((1, 4 + 3, 2), np.float32)
    raw[0, :4, 0] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    raw[0, 5, 0] = 0.9
    raw[0, 4, 1] = 0.1  # below conf
    (det,) = decode(raw, ["WBC", "RBC", "Platelets"], [(scale, (left, top), (480, 640))], 0.25, 0.5, 10)
    assert det.labels == ("RBC",)
    np.testing.assert_allclose(det.xyxy[0], [100, 50, 300, 250], atol=1e-3)
    assert det.scores[0] == pytest.approx(0.9)


def test_rect_letterbox_keeps_scale_and_maps_back():
    from detection.yolo import preprocess

    assert rect_canvas([(574, 732)], 320) == (256, 320)
    assert rect_canvas([(480, 640)], 320) == (256, 320)
    assert rect_canvas([(574, 732), (732, 574)], 320) == (320, 320)  # a batch holds both orientations
    img = np.zeros((574, 732, 3), np.uint8)
    batch, metas = preprocess([img], 320, rect=True)
    assert batch.shape == (1, 3, 256, 320) and batch.dtype == np.float32
    (scale, (left, top), hw) = metas[0]
    _, sq_scale, _ = letterbox(img, 320)
    assert scale == pytest.approx(sq_scale) and left == 0 and top == (256 - round(574 * scale)) // 2
    x1, y1, x2, y2 = np.array([10, 500, 90, 570]) * scale + [left, top, left, top]
    raw = np.zeros((1, 7, 1), np.float32)
    raw[0, :4, 0] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    raw[0, 4, 0] = 0.8
    (det,) = decode(raw, ["WBC", "RBC", "Platelets"], metas, 0.25, 0.5, 10)
    np.testing.assert_allclose(det.xyxy[0], [10, 500, 90, 570], atol=1e-3)


def test_nms_keeps_best_of_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.3], np.float32), 0.5)
    assert keep.tolist() == [1, 2]


def test_unknown_backend_names_valid_ones():
    with pytest.raises(ConfigError, match="valid"):
        build_detector({"backend": "mmdet", "model": "x"})
    with pytest.raises(ConfigError, match="unknown key"):
        build_detector({"backend": "yolo", "model": "yolov8n.yaml", "imgsize": 320})


@pytest.fixture(scope="module")
def tiny_yolo_cfg():
    return {"backend": "yolo", "model": "yolov8n.yaml", "imgsz": 64, "conf": 0.001, "max_det": 5}


def test_tiny_yolo_contract(tiny_yolo_cfg):
    det = build_detector(tiny_yolo_cfg)
    imgs = [np.zeros((574, 732, 3), np.uint8), np.full((100, 50, 3), 200, np.uint8)]
    out = det.detect(imgs)
    assert len(out) == 2 and det.detect([]) == []
    for d, im in zip(out, imgs):
        assert isinstance(d, Detections) and d.xyxy.dtype == np.float32 and d.xyxy.shape == (len(d), 4)
        assert len(d) <= 5 and set(d.labels) <= {"WBC", "RBC", "Platelets"}
        h, w = im.shape[:2]
        assert (d.xyxy[:, [0, 2]] <= w).all() and (d.xyxy[:, [1, 3]] <= h).all() and (d.xyxy >= 0).all()
        assert ((d.scores >= 0) & (d.scores <= 1)).all()


@pytest.mark.slow
def test_yolov3u_builds_from_yaml():
    det = build_detector({"backend": "yolo", "model": "yolov3-tinyu.yaml", "imgsz": 64, "conf": 0.5})
    assert det.detect([np.zeros((64, 64, 3), np.uint8)])[0].xyxy.shape[1] == 4


def test_onnx_export_matches_torch(tmp_path, tiny_yolo_cfg):
    import torch

    from detection.yolo import ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    torch.manual_seed(0)
    y = YOLO("yolov8n.yaml")
    y.model.names = {0: "WBC", 1: "RBC", 2: "Platelets"}
    pt = tmp_path / "tiny.pt"
    y.save(str(pt)) if hasattr(y, "save") else torch.save({"model": y.model}, pt)
    from detection.yolo import export_onnx

    onnx_path = export_onnx(pt, 64, tmp_path / "tiny.onnx")
    cfg_t = {**tiny_yolo_cfg, "weights": str(pt)}
    cfg_o = {**tiny_yolo_cfg, "backend": "onnx", "model": str(onnx_path)}
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    a, b = build_detector(cfg_t).detect(imgs), build_detector(cfg_o).detect(imgs)
    for da, db in zip(a, b):
        assert len(da) == len(db)
        np.testing.assert_allclose(da.scores, db.scores, atol=1e-3)
    # rect batches run through the dynamic-shape export too
    rect = build_detector({**cfg_o, "rect": True}).detect(imgs)
    assert len(rect) == 3 and all(d.xyxy.shape == (len(d), 4) for d in rect)
    # OpenVINO runs the same file to the same detections, at any batch and input size
    ov = build_detector({**cfg_o, "rect": True, "runtime": "openvino"})
    assert ov.name.endswith(":openvino")
    for got, ref in zip(ov.detect(imgs), rect):
        assert len(got) == len(ref) and got.labels == ref.labels
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-3)
        np.testing.assert_allclose(got.xyxy, ref.xyxy, atol=0.05)
    assert len(ov.detect(imgs[:1], imgsz=96)) == 1
    # int8: quantized from two calibration images, runs, keeps the contract
    from detection.yolo import quantize_onnx

    q = quantize_onnx(onnx_path, tmp_path / "tiny_int8.onnx", imgs[:2], 64)
    qd = build_detector({**cfg_o, "model": str(q), "rect": True}).detect(imgs)
    assert len(qd) == 3 and all(((d.scores >= 0) & (d.scores <= 1)).all() for d in qd)


def test_ssd300_default_boxes_follow_smin_smax():
    det = build_detector({"backend": "ssd300", "model": "ssd300_vgg16", "smin": 0.2, "smax": 0.9, "conf": 0.5})
    gen = det.model.anchor_generator
    expected = [0.2 + 0.7 * k / 5 for k in range(6)] + [1.0]
    np.testing.assert_allclose(gen.scales, expected, atol=1e-6)
    out = det.detect([np.zeros((574, 732, 3), np.uint8)])
    assert len(out) == 1 and out[0].xyxy.shape[1] == 4


def test_voc_yolo_coco_readers_agree(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    xml = """<annotation><filename>f1.jpg</filename><size><width>640</width><height>480</height><depth>3</depth>
    </size><object><name>WBC</name><bndbox><xmin>260</xmin><ymin>177</ymin><xmax>491</xmax><ymax>376</ymax>
    </bndbox></object><object><name>RBC</name><bndbox><xmin>-3</xmin><ymin>0</ymin><xmax>100</xmax><ymax>700</ymax>
    </bndbox></object></annotation>"""
    (tmp_path / "Annotations" / "f1.xml").write_text(xml)
    voc = read_voc(tmp_path / "Annotations" / "f1.xml")
    assert voc.labels == ["WBC", "RBC"] and voc.boxes[0] == [260, 177, 491, 376]
    assert voc.boxes[1] == [0, 0, 100, 480]  # clipped to the image
    from PIL import Image

    Image.new("RGB", (640, 480)).save(tmp_path / "JPEGImages" / "f1.jpg")
    data_yaml = write_yolo_dataset({"train": [voc]}, ["WBC", "RBC", "Platelets"], tmp_path / "yolo")
    lbl = tmp_path / "yolo" / "labels" / "train" / "JPEGImages_f1.txt"
    assert lbl.read_text().splitlines()[0].startswith("0 0.58")
    back = read_yolo(tmp_path / "yolo" / "images" / "train" / "JPEGImages_f1.jpg", lbl, ["WBC", "RBC", "Platelets"])
    np.testing.assert_allclose(back.boxes, voc.boxes, atol=0.01)
    coco = to_coco([voc], ["WBC", "RBC", "Platelets"])
    (tmp_path / "c.json").write_text(json.dumps(coco))
    (rec,) = read_coco(tmp_path / "c.json", tmp_path)
    np.testing.assert_allclose(rec.boxes, voc.boxes)
    assert rec.labels == voc.labels
    assert data_yaml.exists()


def test_unknown_split_is_named(tmp_path):
    card = {"name": "x", "format": "voc", "root": tmp_path, "splits": {"train": "a.txt"}, "classes": []}
    with pytest.raises(ConfigError, match="splits"):
        read_split(card, "test")


@pytest.mark.realdata
def test_real_dataset_splits(data_root):
    bccd = load_card("bccd")
    sizes = {s: len(read_split(bccd, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 205, "val": 87, "test": 72}
    txl = load_card("txl_pbc")
    assert {s: len(read_split(txl, s)) for s in ("train", "val", "test")} == {"train": 350, "val": 100, "test": 50}
    recs = read_split(bccd, "test")
    assert all(isinstance(r, FieldAnnotation) and r.path.exists() for r in recs)
    assert sum(lab == "WBC" for r in recs for lab in r.labels) >= 70  # some test fields hold no WBC
    # the 1-pixel RBC box of BloodImage_00338 is dropped by min_size
    allr = read_split(bccd, "trainval") + recs
    assert all(b[2] - b[0] >= 2 and b[3] - b[1] >= 2 for r in allr for b in r.boxes)


def test_coco_evaluate_perfect_and_missing(tmp_path):
    from detection.evaluate import coco_evaluate

    gt = [FieldAnnotation(tmp_path / "a.jpg", 100, 100, [[10, 10, 50, 50], [60, 60, 90, 90]], ["WBC", "RBC"]),
          FieldAnnotation(tmp_path / "b.jpg", 100, 100, [[20, 20, 40, 40]], ["WBC"])]
    perfect = {str((tmp_path / "a.jpg").resolve()): {"boxes": [[10, 10, 50, 50], [60, 60, 90, 90]],
                                                     "scores": [0.9, 0.8], "labels": ["WBC", "RBC"]},
               str((tmp_path / "b.jpg").resolve()): {"boxes": [[20, 20, 40, 40]], "scores": [0.7], "labels": ["WBC"]}}
    m = coco_evaluate(gt, perfect, ["WBC", "RBC", "Platelets"])
    assert m["per_class"]["WBC"]["AP50"] == 1.0 and m["per_class"]["RBC"]["AP"] == 1.0
    assert m["per_class"]["Platelets"]["AP50"] is None  # no ground truth: left out of the mean
    assert m["mAP50"] == 1.0
    # the second field missing: half the WBCs are never found
    del perfect[str((tmp_path / "b.jpg").resolve())]
    m = coco_evaluate(gt, perfect, ["WBC", "RBC", "Platelets"])
    assert m["fields_without_predictions"] == 1 and m["per_class"]["WBC"]["AP50"] == pytest.approx(0.5, abs=0.01)


def test_annotation_review_adds_missed_cells_and_ignores_regions(tmp_path):
    from detection.data import apply_review, load_review
    from detection.evaluate import coco_evaluate

    gt = [FieldAnnotation(tmp_path / "a.jpg", 100, 100, [[10, 10, 50, 50]], ["WBC"]),
          FieldAnnotation(tmp_path / "b.jpg", 100, 100, [], [])]
    # a: the labelled cell and a fragment at the edge; b: an unlabelled whole cell found with a high score
    preds = {str((tmp_path / "a.jpg").resolve()): {"boxes": [[10, 10, 50, 50], [90, 0, 100, 30]],
                                                   "scores": [0.6, 0.9], "labels": ["WBC", "WBC"]},
             str((tmp_path / "b.jpg").resolve()): {"boxes": [[30, 30, 70, 70]], "scores": [0.95], "labels": ["WBC"]}}
    official = coco_evaluate(gt, preds, ["WBC"])
    assert official["per_class"]["WBC"]["AP50"] < 0.5  # two higher-scored "false" detections before the one hit
    (tmp_path / "r.yaml").write_text(
        "dataset: toy\nreviewed: test\nclasses: [WBC]\nfields:\n"
        "  a.jpg: {ignore: [{label: WBC, box: [88, 0, 100, 35]}], note: edge fragment}\n"
        "  b.jpg: {add: [{label: WBC, box: [31, 29, 70, 71]}]}\n"
        "  elsewhere.jpg: {add: [{label: WBC, box: [0, 0, 5, 5]}]}\n")
    reviewed, changed = apply_review(gt, load_review(tmp_path / "r.yaml"))
    assert changed == 2 and gt[1].boxes == []  # the records themselves are not modified
    assert reviewed[1].boxes == [[31.0, 29.0, 70.0, 71.0]] and reviewed[0].ignore_boxes == [[88.0, 0.0, 100.0, 35.0]]
    m = coco_evaluate(reviewed, preds, ["WBC"])
    assert m["per_class"]["WBC"]["AP50"] == 1.0
    assert m["gt_boxes"] == {"WBC": 2} and m["ignore_regions"] == {"WBC": 1}
    for bad in ("  a.jpg: {add: [{label: RBC, box: [0, 0, 5, 5]}]}",
                "  a.jpg: {add: [{label: WBC, box: [5, 0, 1, 5]}]}",
                "  a.jpg: {remove: []}"):
        (tmp_path / "bad.yaml").write_text(f"dataset: toy\nreviewed: x\nclasses: [WBC]\nfields:\n{bad}\n")
        with pytest.raises(ConfigError):
            load_review(tmp_path / "bad.yaml")
    (tmp_path / "out.yaml").write_text("dataset: toy\nreviewed: x\nclasses: [WBC]\nfields:\n"
                                       "  a.jpg: {add: [{label: WBC, box: [50, 50, 120, 90]}]}\n")
    with pytest.raises(ConfigError, match="outside"):
        apply_review(gt, load_review(tmp_path / "out.yaml"))


def test_shipped_bccd_review_fits_the_test_split(data_root):
    from detection.data import apply_review, load_card, load_review, read_split
    from core.config import REPO_ROOT

    review = load_review(REPO_ROOT / "datasets" / "bccd_review.yaml")
    test = read_split(load_card("bccd"), "test")
    reviewed, changed = apply_review(test, review)
    assert changed == len(review["fields"]) == 9  # every reviewed field is a test field
    assert sum(len(r.boxes) for r in reviewed) == sum(len(r.boxes) for r in test) + 3


def test_lower_magnification_mosaic_keeps_every_box(tmp_path):
    """tools/eval_robustness.py: at half magnification four fields fill the canvas; every box scales and moves."""
    from PIL import Image

    from detection.data import FieldAnnotation
    from tools.eval_robustness import apply_shift, mosaic

    recs = []
    for k in range(4):
        img = np.full((100, 200, 3), 40 * k, np.uint8)
        Image.fromarray(img).save(tmp_path / f"{k}.png")
        recs.append(FieldAnnotation(tmp_path / f"{k}.png", 200, 100, [[20.0, 10.0, 60.0, 50.0]], [f"c{k}"]))
    im, boxes, labels = mosaic(recs, 0, 0.5)
    assert im.shape == (100, 200, 3) and labels == ["c0", "c1", "c2", "c3"]
    np.testing.assert_allclose(boxes, [[10, 5, 30, 25], [110, 5, 130, 25], [10, 55, 30, 75], [110, 55, 130, 75]])
    assert im[60, 150, 0] == 120 and im[10, 10, 0] == 0  # tile 3 bottom right, tile 0 top left
    im7, boxes7, _ = mosaic(recs, 0, 0.7)  # other scales: cropped to the field, boxes clipped
    assert im7.shape == (100, 200, 3) and all(b[2] <= 200 and b[3] <= 100 for b in boxes7)
    im2, boxes2, labels2 = mosaic(recs, 0, 2.0)  # higher magnification: field 0's top-left quarter, twice the size
    assert im2.shape == (100, 200, 3) and labels2 == ["c0"] and np.allclose(boxes2, [[40, 20, 120, 100]])
    im3, boxes3, labels3 = mosaic(recs, 1, 0.35)  # a third of the magnification: 3 x 3 tiles, records cycled
    assert im3.shape == (100, 200, 3) and labels3 == ["c1", "c2", "c3", "c0", "c1", "c2", "c3", "c0", "c1"]
    np.testing.assert_allclose(boxes3[4], [70 + 7, 35 + 3.5, 70 + 21, 35 + 17.5])  # centre tile: offset (70, 35)
    from tools.eval_robustness import check_shift

    assert check_shift("mag0.7") == "mag0.7" and check_shift("pale") == "pale"
    assert check_shift("mag2") == "mag2"  # higher magnification: the top-left half enlarged
    for bad in ("mag0.1", "mag2.5", "magx", "sepia"):
        with pytest.raises(Exception, match="unknown shift"):
            check_shift(bad)
    pale, q = apply_shift(np.full((8, 8, 3), (200, 100, 50), np.uint8), "pale")
    assert q == 92 and pale.std(axis=2).mean() < np.array([200, 100, 50]).std()


def _dets(boxes, labels, scores):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), tuple(labels))


def _scale_cfg(**kw):
    from detection import check_detector_config

    return check_detector_config({"backend": "onnx", "model": "x.onnx", "imgsz": 320, "auto_scale": True, **kw})


def test_field_scale_size_measures_red_cells_on_the_input():
    from detection import field_scale_size

    cfg = _scale_cfg()  # below 40 px -> 52 px, at most 640
    # 640 px wide field at 320: factor 0.5. Red cells 100 px -> 50 px on the input: training scale, kept.
    big = _dets([[0, 0, 100, 100]] * 5, ["RBC"] * 5, [0.9] * 5)
    assert field_scale_size(big, (480, 640), 320, cfg) == (320, 50.0)
    # 60 px -> 30 px on the input: half magnification -> 320 * 52 / 30 = 554.7 -> 576
    small = _dets([[0, 0, 60, 60]] * 5, ["RBC"] * 5, [0.9] * 5)
    assert field_scale_size(small, (480, 640), 320, cfg) == (576, 30.0)
    # 70 px -> 35 px: 320 * 52 / 35 = 475.4 -> 480; with a 60 px target 548.6 -> 576
    assert field_scale_size(_dets([[0, 0, 70, 70]] * 3, ["RBC"] * 3, [0.9] * 3), (480, 640), 320, cfg)[0] == 480
    assert field_scale_size(_dets([[0, 0, 70, 70]] * 3, ["RBC"] * 3, [0.9] * 3), (480, 640), 320,
                            _scale_cfg(scale_target_px=60.0))[0] == 576
    # tiny cells: capped at max_imgsz
    tiny = _dets([[0, 0, 10, 10]] * 5, ["RBC"] * 5, [0.9] * 5)
    assert field_scale_size(tiny, (480, 640), 320, _scale_cfg(max_imgsz=512))[0] == 512
    # other classes and unconfident boxes do not measure; too few boxes: keep the first pass
    mixed = _dets([[0, 0, 10, 10]] * 4 + [[0, 0, 100, 100]] * 2, ["WBC"] * 2 + ["RBC"] * 2 + ["RBC"] * 2,
                  [0.9, 0.9, 0.1, 0.2, 0.9, 0.9])
    assert field_scale_size(mixed, (480, 640), 320, cfg) == (320, None)
    assert field_scale_size(Detections(), (480, 640), 320, cfg) == (320, None)
    assert field_scale_size(mixed, (480, 640), 320, _scale_cfg(scale_min_boxes=2)) == (320, 50.0)


def test_auto_scale_detects_small_cell_fields_again():
    from detection import AutoScaleDetector

    class Fake:  # red cells 60 px wide in the field whose pixel (0, 0) is 1, 100 px elsewhere
        name, classes, calls = "fake@320", ["WBC", "RBC", "Platelets"], []

        def detect(self, images, imgsz=None):
            self.calls.append((len(images), imgsz))
            w = [60.0 if im[0, 0, 0] == 1 else 100.0 for im in images]
            return [_dets([[0, 0, s, s]] * 4, ["RBC"] * 4, [0.9] * 4) if imgsz is None
                    else _dets([[1, 1, 5, 5]], ["Platelets"], [0.5]) for s in w]

    det = AutoScaleDetector(Fake(), _scale_cfg())
    imgs = [np.zeros((480, 640, 3), np.uint8), np.ones((480, 640, 3), np.uint8), np.zeros((480, 640, 3), np.uint8)]
    out = det.detect(imgs)
    assert Fake.calls == [(3, None), (1, 576)]  # only the small-cell field runs again, at 320 * 52 / 30 -> 576
    assert [d.imgsz for d in out] == [320, 576, 320]
    assert out[1].labels == ("Platelets",) and out[0].labels == ("RBC",) * 4
    assert det.detect([]) == [] and "auto-scale<=640" in det.name


def test_auto_scale_probes_fields_whose_red_cells_are_too_small_to_find():
    from detection import AutoScaleDetector

    class Fake:  # one red cell found at 320 px; at 640 px: red cells of 30, 70 or 100 px, or again one (code 4)
        name, classes, calls = "fake@320", ["WBC", "RBC", "Platelets"], []

        def detect(self, images, imgsz=None):
            self.calls.append((len(images), imgsz))
            out = []
            for im in images:
                code = int(im[0, 0, 0])
                if imgsz is None or (imgsz == 640 and code == 4):
                    out.append(_dets([[0, 0, 20, 20]], ["RBC"], [0.9]))
                elif imgsz == 640:
                    w = {1: 30.0, 2: 70.0, 3: 100.0}[code]
                    out.append(_dets([[0, 0, w, w]] * 5, ["RBC"] * 5, [0.9] * 5))
                else:
                    out.append(_dets([[1, 1, 5, 5]], ["Platelets"], [0.5]))
            return out

    det = AutoScaleDetector(Fake(), _scale_cfg())
    imgs = [np.full((480, 640, 3), code, np.uint8) for code in (1, 2, 3, 4)]
    out = det.detect(imgs)
    # all four probed at 640; 2 (35 px at 320 -> 640 * 52 / 70 = 475 -> 480) detected a third time
    assert Fake.calls == [(4, None), (4, 640), (1, 480)]
    assert [d.imgsz for d in out] == [640, 480, 320, 320]
    assert len(out[0]) == 5 and out[1].labels == ("Platelets",) and len(out[2]) == 1 and len(out[3]) == 1


def test_auto_scale_config_errors():
    with pytest.raises(ConfigError, match="ssd300 always runs at 300"):
        build_detector({"backend": "ssd300", "model": "ssd300_vgg16", "imgsz": 300, "auto_scale": True})
    with pytest.raises(ConfigError, match="scale_label 'RBCs' is not one of"):
        _scale_cfg(scale_label="RBCs")
    with pytest.raises(ConfigError, match="max_imgsz must be a multiple of 32 and >= imgsz"):
        _scale_cfg(max_imgsz=256)
    with pytest.raises(ConfigError, match="scale_below_px <= scale_target_px"):
        _scale_cfg(scale_below_px=70.0)
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_detector({"backend": "yolo", "model": "yolov8n.yaml", "imgsz": 300})


def test_tiny_yolo_runs_at_another_input_size(tiny_yolo_cfg):
    det = build_detector({**tiny_yolo_cfg, "rect": True})
    img = np.zeros((120, 160, 3), np.uint8)
    a, b = det.detect([img])[0], det.detect([img], imgsz=128)[0]
    assert a.xyxy.shape == (len(a), 4) and b.xyxy.shape == (len(b), 4)
    assert (b.xyxy[:, [0, 2]] <= 160).all() and (b.xyxy[:, [1, 3]] <= 120).all()


@pytest.mark.realdata
def test_default_detector_adapts_to_half_magnification(data_root):
    """The shipped detector config: BCCD test fields at their own magnification stay at 320 px; a half
    magnification mosaic of four of them is detected again at a larger size and its leukocytes are found; a quarter
    magnification mosaic (red cells too small to find at 320 px) is probed at 640 px."""
    from detection import check_detector_config
    from detection.data import load_card, read_split
    from core.config import REPO_ROOT, load_yaml
    from core.io import read_image
    from tools.eval_robustness import mosaic

    cfg = check_detector_config(load_yaml(REPO_ROOT / "configs" / "detector" / "yolov8n_320_int8.yaml"))
    assert cfg["auto_scale"]
    det = build_detector(cfg)
    test = read_split(load_card("bccd"), "test")[:4]
    normal = det.detect([read_image(r.path) for r in test])
    assert [d.imgsz for d in normal] == [320] * 4
    im, boxes, labels = mosaic(test, 0, 0.5)
    small = det.detect([im])[0]
    assert small.imgsz >= 576
    from detection.yolo import box_iou

    wbc = [b for b, lab in zip(boxes, labels) if lab == "WBC"]
    found = small.xyxy[[lab == "WBC" for lab in small.labels]]
    assert wbc and all(len(found) and box_iou(np.asarray(b, np.float32), found).max() >= 0.5 for b in wbc)
    # a quarter of the magnification: red cells too small to find at 320 px, so the field is probed at 640 px
    quarter, qboxes, qlabels = mosaic(test, 0, 0.25)
    q = det.detect([quarter])[0]
    assert q.imgsz == 640
    qwbc = [b for b, lab in zip(qboxes, qlabels) if lab == "WBC"]
    qfound = q.xyxy[[lab == "WBC" for lab in q.labels]]
    hits = sum(len(qfound) and box_iou(np.asarray(b, np.float32), qfound).max() >= 0.5 for b in qwbc)
    assert hits >= 0.8 * len(qwbc)


def test_every_shipped_config_validates():
    """configs/detector/*.yaml and configs/pipeline/*.yaml load and pass their schemas; the fast pipeline is the
    default with the detector's auto_scale off."""
    from detection import check_detector_config
    from core.config import REPO_ROOT, load_yaml
    from pipelines.pipeline import load_pipeline_config

    dets = sorted((REPO_ROOT / "configs" / "detector").glob("*.yaml"))
    pipes = sorted((REPO_ROOT / "configs" / "pipeline").glob("*.yaml"))
    assert len(dets) >= 8 and len(pipes) >= 5
    for p in dets:
        check_detector_config(load_yaml(p), str(p))
    loaded = {p.stem: load_pipeline_config(p) for p in pipes}
    default, fast = loaded["default"], loaded["fast"]
    assert default["detector_cfg"]["auto_scale"] and not fast["detector_cfg"]["auto_scale"]
    assert {**default["detector_cfg"], "auto_scale": False} == fast["detector_cfg"]
    assert [c["cfg"]["weights"] for c in default["classifiers"]] == [c["cfg"]["weights"] for c in fast["classifiers"]]


def test_field_warnings_flag_unreadable_fields():
    """Smartphone eyepiece photos: tiny red cells, half-field 'WBC' boxes; a normal field gets no warning."""
    from detection import DETECTOR_SCHEMA, Detections, field_warnings
    from core.config import validate

    cfg = validate({"backend": "onnx", "model": "m.onnx", "imgsz": 320}, DETECTOR_SCHEMA, "t")
    rbc = [[x, 100, x + 60, 160] for x in range(0, 600, 70)]  # 60 px red cells in a 640 px field: 30 px at 320

    def det(boxes, labels, imgsz=320):
        return Detections(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32), tuple(labels), imgsz)

    ok = det(rbc + [[200, 250, 330, 380]], ["RBC"] * len(rbc) + ["WBC"])
    assert field_warnings(ok, (480, 640), cfg) == []
    huge = det(rbc + [[0, 0, 400, 470]], ["RBC"] * len(rbc) + ["WBC"])
    w = field_warnings(huge, (480, 640), cfg)
    assert any("red-cell diameters wide" in m for m in w) and any("cover" in m for m in w)
    tiny = det([[x, 10, x + 12, 22] for x in range(0, 400, 25)], ["RBC"] * 16, imgsz=640)  # 12 px: 18 px at 640
    assert any("too small" in m for m in field_warnings(tiny, (416, 416), cfg))
    nothing = det([[100, 100, 330, 330]], ["WBC"])  # no red cells to measure, a box over half the field
    assert any("span half" in m for m in field_warnings(nothing, (416, 416), cfg))
