"""Classification: taxonomies, backbones, checkpoint format, metrics, temperature scaling, a tiny training run,
inference contract, and the cascade's fusion rule."""

import numpy as np
import pytest

from classification.metrics import confusion, ece, fit_temperature, per_class, softmax, summarize
from classification.models import BACKBONES, build_backbone, load_checkpoint, save_checkpoint
from classification.taxonomies import TAXONOMIES, VIEWS, check_task, refines


def test_taxonomies():
    assert len(TAXONOMIES["pbc8"]) == 8 and len(TAXONOMIES["wang11"]) == 11 and len(TAXONOMIES["covid_rl"]) == 3
    assert "reactive_lymphocyte" in TAXONOMIES["wang11"]
    with pytest.raises(ValueError, match="valid"):
        check_task("pbc9")
    assert refines("segmented_neutrophil", "neutrophil") and refines("covid_rl", "lymphocyte")
    assert not refines("blast", "lymphocyte") and refines("monocyte", "monocyte")


def test_metrics_hand_computed():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 1, 0])
    c = confusion(y, p, 3)
    assert c.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    pc = per_class(c, ["a", "b", "c"])
    assert pc["a"]["sensitivity"] == pytest.approx(2 / 3, abs=1e-4)
    assert pc["a"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert pc["a"]["specificity"] == pytest.approx(2 / 3, abs=1e-4)  # tn = 2 (rows b, c cols b, c), fp = 1
    assert pc["b"]["specificity"] == pytest.approx(3 / 4, abs=1e-4)
    assert pc["c"]["sensitivity"] == 0.0 and pc["c"]["precision"] is None


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    true_logits = rng.normal(0, 1.5, (n, k))
    probs = softmax(true_logits)
    y = np.array([rng.choice(k, p=pr) for pr in probs])
    t = fit_temperature(true_logits * 3.0, y)  # a model 3x overconfident
    assert t == pytest.approx(3.0, rel=0.15)
    assert ece(softmax(true_logits * 3.0, t), y) < ece(softmax(true_logits * 3.0), y)


def test_summarize_has_paper_figures():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = summarize(probs, np.array([0, 1, 1, 1]), ["x", "y"])
    assert m["accuracy"] == 0.75 and m["confusion"] == [[1, 0], [1, 2]]
    assert m["mean_class_accuracy"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)
    cov = {r["threshold"]: r for r in m["coverage"]}
    assert cov[0.0]["coverage"] == 1.0 and cov[0.8]["coverage"] == 0.5 and cov[0.8]["accuracy"] == 1.0


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_every_backbone_builds_and_runs(arch):
    import torch

    m = build_backbone(arch, 5).eval()
    size = 75 if arch == "inception_v3" else 64
    with torch.inference_mode():
        assert m(torch.zeros(1, 3, size, size)).shape == (1, 5)


def test_pretrained_loads_a_checkpoint_and_refuses_a_foreign_one(tmp_path):
    import torch

    src = build_backbone("tiny_cnn", 8)
    p = save_checkpoint(tmp_path / "c.pt", src, "tiny_cnn", "pbc8", TAXONOMIES["pbc8"], 32, (0.5,) * 3, (0.2,) * 3)
    m = build_backbone("tiny_cnn", 11, str(p))  # another head size: the body still loads
    same = [k for k, v in src.state_dict().items() if v.shape == m.state_dict()[k].shape]
    assert same and all(torch.equal(src.state_dict()[k], m.state_dict()[k]) for k in same)
    torch.save(build_backbone("shufflenet_v2", 8).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="tensors fit"):
        build_backbone("tiny_cnn", 8, str(tmp_path / "other.pt"))


def test_checkpoint_roundtrip_and_classifier(tmp_path):
    from classification.classifier import Classifier

    m = build_backbone("tiny_cnn", 8)
    p = save_checkpoint(tmp_path / "c.pt", m, "tiny_cnn", "pbc8", TAXONOMIES["pbc8"], 32, (0.5,) * 3, (0.2,) * 3,
                        temperature=2.0, metrics={"test": {"accuracy": 0.5}})
    model, meta = load_checkpoint(p)
    assert meta["task"] == "pbc8" and meta["input_size"] == 32 and meta["temperature"] == 2.0
    clf = Classifier(p)
    crops = [np.zeros((50, 40, 3), np.uint8), np.full((10, 90, 3), 255, np.uint8)]
    probs = clf.classify(crops)
    assert probs.shape == (2, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert clf.classify([]).shape == (0, 8)
    with pytest.raises(FileNotFoundError):
        Classifier(tmp_path / "missing.pt")


def test_onnx_export_gives_the_checkpoint_probabilities(tmp_path, monkeypatch):
    import onnx

    from openvino import Type as ov_type

    from core.onnxrt import openvino_cache_dir

    from classification.classifier import Classifier, OnnxClassifier, export_onnx, load_classifier

    m = build_backbone("tiny_cnn", 3)
    p = save_checkpoint(tmp_path / "c.pt", m, "tiny_cnn", "covid_rl", TAXONOMIES["covid_rl"], 32, (0.5,) * 3,
                        (0.2,) * 3, temperature=1.7, metrics={"test": {"accuracy": 0.5, "ece": 0.1}})
    o = export_onnx(p, tmp_path / "c.onnx")
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (s, s + 7, 3), dtype=np.uint8) for s in (20, 33, 64)]
    a, b = Classifier(p).classify(crops), OnnxClassifier(o).classify(crops)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # the same export in OpenVINO: same probabilities and metadata, any batch size (dynamic axis); compiled models
    # are cached where LEUKODIFF_OV_CACHE says (nowhere when it is empty)
    monkeypatch.setenv("LEUKODIFF_OV_CACHE", "")
    assert openvino_cache_dir() is None
    monkeypatch.setenv("LEUKODIFF_OV_CACHE", str(tmp_path / "ov_cache"))
    ov = load_classifier(o, batch=2, runtime="openvino")
    assert any((tmp_path / "ov_cache").iterdir())
    np.testing.assert_allclose(ov.classify(crops), b, atol=1e-5)
    assert ov.name.endswith(":openvino") and ov.temperature == 1.7 and ov.meta["source"] == "c.pt"
    # "openvino" pins f32: OpenVINO's own default is bf16 on CPUs that have it (Zen 4, Sapphire Rapids), which gave
    # other probabilities than above; bf16 only when asked for, and the run's versions say so
    assert ov.session.model.get_property("INFERENCE_PRECISION_HINT") == ov_type.f32
    bf = load_classifier(o, batch=2, runtime="openvino_bf16")
    assert bf.name.endswith(":openvino_bf16") and bf.classify(crops).shape == (3, 3)
    assert bf.session.model.get_property("INFERENCE_PRECISION_HINT") in (ov_type.bf16, ov_type.f32)
    with pytest.raises(ValueError, match="OpenVINO"):
        OnnxClassifier(o, device="cuda", runtime="openvino")
    with pytest.raises(ValueError, match="unknown ONNX runtime"):
        OnnxClassifier(o, runtime="tensorrt")
    assert isinstance(load_classifier(o), OnnxClassifier) and isinstance(load_classifier(p), Classifier)
    clf = load_classifier(o, batch=2)
    assert clf.task == "covid_rl" and clf.classes == TAXONOMIES["covid_rl"] and clf.temperature == 1.7
    assert clf.classify(crops).shape == (3, 3) and clf.classify([]).shape == (0, 3)
    assert clf.meta["metrics"]["test"]["accuracy"] == 0.5 and clf.meta["source"] == "c.pt"
    plain = onnx.load(str(o))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="not a leukodiff classifier"):
        OnnxClassifier(tmp_path / "plain.onnx")


def test_tta_views_mean_logits_and_adaptive_selection(tmp_path):
    import torch

    from classification.classifier import Classifier, load_classifier
    from classification.preprocess import mean_logit_probs, tta_views
    from core.config import ConfigError

    x = np.random.default_rng(0).integers(0, 255, (3, 6, 6, 3), dtype=np.uint8)
    for n in (1, 2, 4, 8):
        views = tta_views(x, n)
        assert len(views) == n and views[0] is x and all(v.shape == x.shape for v in views)
        assert len({v.tobytes() for v in views}) == n  # all distinct: the dihedral group of the square
    assert any(np.array_equal(v, np.rot90(x, 1, (1, 2)).transpose(0, 2, 1, 3)) for v in tta_views(x, 8))
    with pytest.raises(ValueError):
        tta_views(x, 3)
    # the normalized geometric mean of softmax(l / T) is softmax(mean(l) / T)
    logits = np.random.default_rng(1).normal(0, 3, (4, 5, 8))
    got = mean_logit_probs([softmax(v, 1.5) for v in logits])
    np.testing.assert_allclose(got, softmax(logits.mean(0), 1.5), atol=1e-5)

    torch.manual_seed(0)
    p = save_checkpoint(tmp_path / "c.pt", build_backbone("tiny_cnn", 8), "tiny_cnn", "pbc8", TAXONOMIES["pbc8"],
                        16, (0.5,) * 3, (0.2,) * 3, temperature=0.05)
    crops = [np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(6)]
    plain = Classifier(p)
    single = plain.classify(crops)
    prepared = plain.preprocess(crops)
    views = [plain.classify_prepared(np.ascontiguousarray(v)) for v in tta_views(prepared, 8)]
    always_clf = load_classifier(p, tta=8, tta_below=1.0)
    assert always_clf.name.endswith(":tta8<1") and not load_classifier(p).name.endswith("<1")
    always = always_clf.classify(crops)
    np.testing.assert_allclose(always, mean_logit_probs(views), atol=1e-5)
    assert np.abs(always - single).max() > 1e-3  # the views do change the answer of this untrained model
    never = load_classifier(p, tta=8, tta_below=0.0).classify(crops)
    np.testing.assert_array_equal(never, single)
    thr = float(np.median(single.max(1)))
    some = load_classifier(p, tta=8, tta_below=thr).classify(crops)
    low = single.max(1) < thr
    assert 0 < low.sum() < len(crops)
    np.testing.assert_allclose(some[low], always[low], atol=1e-5)
    np.testing.assert_array_equal(some[~low], single[~low])
    with pytest.raises(ConfigError, match="tta"):
        load_classifier(p, tta=3)


def test_pipeline_stage_sets_tta(tmp_path):
    from conftest import ROOT
    from core.config import ConfigError
    from pipelines.pipeline import load_pipeline_config

    cfg = load_pipeline_config(ROOT / "configs" / "pipeline" / "accurate.yaml")
    assert [(st["cfg"]["tta"], st["cfg"]["tta_below"]) for st in cfg["classifiers"][:1]] == [(8, 0.9)]
    default = load_pipeline_config(ROOT / "configs" / "pipeline" / "default.yaml")
    assert [(st["cfg"]["tta"], st["cfg"]["tta_below"]) for st in default["classifiers"][:1]] == [(4, 0.9)]
    fast = load_pipeline_config(ROOT / "configs" / "pipeline" / "fast.yaml")
    assert all(st["cfg"]["tta"] == 1 for st in fast["classifiers"])
    text = (ROOT / "configs" / "pipeline" / "accurate.yaml").read_text().replace("tta: 8", "tta: 3", 1)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match="'tta' must be one of"):
        load_pipeline_config(tmp_path / "bad.yaml")


def test_shipped_onnx_classifiers_are_exports_of_the_shipped_checkpoints():
    """The default pipeline runs the .onnx files: they must come from the shipped .pt (re-export after retraining:
    tools/export_onnx.py --classifier) and give its probabilities."""
    import hashlib

    from classification.classifier import Classifier, OnnxClassifier
    from conftest import ROOT
    from pipelines.synthetic import render_field

    crops = [render_field(i).image[100:300, 200:400] for i in range(3)]
    exports = sorted((ROOT / "classification" / "weights").glob("*.onnx"))
    assert {OnnxClassifier(o).task for o in exports} >= {"fine13"}
    for onx_path in exports:
        pt = onx_path.with_suffix(".pt")
        onx = OnnxClassifier(onx_path)
        assert onx.meta["source_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest(), f"re-export {pt.name}"
        np.testing.assert_allclose(Classifier(pt).classify(crops), onx.classify(crops), atol=1e-4)


def test_degradation_augmentation_keeps_shape_range_and_seed():
    import torch

    from classification.schema import TRAIN_SCHEMA
    from classification.train import augment, degrade
    from core.config import validate

    x = torch.rand(16, 3, 32, 32)
    cfg = validate({"blur": 1.5, "resolution": 0.5, "noise": 0.05}, TRAIN_SCHEMA, "t")
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    b = augment(x, cfg, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    off = validate({}, TRAIN_SCHEMA, "t")
    assert torch.equal(degrade(x.clone(), off, torch.Generator().manual_seed(0)), x)
    d = degrade(x.clone(), cfg, torch.Generator().manual_seed(1))
    changed = (d != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 16  # a part of the batch, not all or nothing


def test_gamma_augmentation_bends_tone_curve_per_crop():
    import torch

    from classification.schema import TRAIN_SCHEMA
    from classification.train import augment
    from core.config import validate

    x = torch.full((64, 3, 8, 8), 0.5)
    base = {"rotate": False, "scale": 0.0, "translate": 0.0, "color": 0.0, "stain": 0.0}
    off = augment(x, validate(base, TRAIN_SCHEMA, "t"), torch.Generator().manual_seed(0))
    assert torch.allclose(off, x)
    y = augment(x, validate({**base, "gamma": 0.5}, TRAIN_SCHEMA, "t"), torch.Generator().manual_seed(0))
    v = y[:, 0, 0, 0]
    assert torch.allclose(y, v.view(-1, 1, 1, 1).expand_as(y))  # one exponent per crop
    assert v.min() < 0.45 and v.max() > 0.55  # both darker and lighter crops
    assert v.min() >= 0.5 ** 1.5 - 1e-6 and v.max() <= 0.5 ** (1 / 1.5) + 1e-6  # g within [1/1.5, 1.5]


def test_tiny_training_run_learns_and_writes_card(tmp_path):
    """Two colour classes drawn in code: a tiny CNN must separate them, and the checkpoint carries the card."""
    from classification.train import train_classifier

    rng = np.random.default_rng(0)
    classes = TAXONOMIES["covid_rl"]

    def make(n):
        y = rng.integers(0, 2, n)
        x = np.empty((n, 32, 32, 3), np.uint8)
        for i, c in enumerate(y):
            base = (200, 60, 60) if c == 0 else (60, 60, 200)
            x[i] = np.clip(rng.normal(base, 20, (32, 32, 3)), 0, 255)
        return x, y.astype(np.int64)

    cfg = {"task": "covid_rl", "arch": "tiny_cnn", "input_size": 32, "pretrained": None,
           "train": {"epochs": 3, "batch": 32, "lr": 0.01, "run_dir": str(tmp_path / "run"), "color": 0.0,
                     "stain": 0.0, "patience": 5}}
    out = tmp_path / "m.pt"
    metrics = train_classifier(cfg, out, {"train": make(256), "val": make(64), "test": make(64)}, log=lambda m: None)
    assert metrics["test"]["accuracy"] > 0.9
    assert metrics["temperature"] > 0
    _, meta = load_checkpoint(out)
    assert meta["classes"] == classes and meta["training"]["n_train"] == 256
    assert len(meta["training"]["history"]) >= 1
    # resume continues from the saved epoch instead of starting over
    cfg["train"]["epochs"] = 4
    logs = []
    train_classifier(cfg, out, {"train": make(256), "val": make(64)}, resume=True, log=logs.append)
    assert any("resumed at epoch 4" in m for m in logs)


def test_stain_normalized_training_and_inference(tmp_path):
    """stain_normalize: the checkpoint carries the reference; torch and ONNX inference normalize every crop to it."""
    import cv2

    from classification.classifier import Classifier, OnnxClassifier, export_onnx
    from classification.train import train_classifier

    rng = np.random.default_rng(0)

    def make(n):
        x = np.clip(rng.normal((180, 120, 150), 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return x, rng.integers(0, 3, n).astype(np.int64)

    cfg = {"task": "covid_rl", "arch": "tiny_cnn", "input_size": 32, "pretrained": None,
           "train": {"epochs": 1, "batch": 32, "run_dir": str(tmp_path / "run"), "stain_normalize": True}}
    logs = []
    train_classifier(cfg, tmp_path / "m.pt", {"train": make(96), "val": make(32)}, log=logs.append)
    assert any("stain normalization" in m for m in logs)
    clf = Classifier(tmp_path / "m.pt")
    ref = clf.meta["stain_reference"]
    assert len(ref["lab_mean"]) == 3 and len(ref["lab_std"]) == 3
    bluish = np.clip(rng.normal((90, 110, 210), 25, (40, 40, 3)), 0, 255).astype(np.uint8)
    lab = cv2.cvtColor(clf.preprocess([bluish])[0], cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    np.testing.assert_allclose(lab.mean(0), ref["lab_mean"], atol=3)
    onx = OnnxClassifier(export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx"))
    assert onx.meta["stain_reference"] == ref
    np.testing.assert_allclose(onx.classify([bluish, bluish[:20]]), clf.classify([bluish, bluish[:20]]), atol=1e-5)


class _FixedClassifier:
    """Test double with a real Classifier's interface: returns preset probabilities (and familiarity scores)."""

    def __init__(self, task, probs, ood=None):
        self.task, self.classes = task, TAXONOMIES[task]
        self.input_size, self.name, self._p = 8, f"fixed:{task}", np.asarray(probs, np.float32)
        self._ood = ood
        self.has_ood = ood is not None
        self.views = {v: TAXONOMIES[v] for v in VIEWS.get(task, [])}

    def preprocess(self, crops):
        return np.zeros((len(crops), 8, 8, 3), np.uint8)

    def prepare_resized(self, x):
        return x

    def classify_prepared(self, x, with_ood=False):
        p = np.repeat(self._p[None], len(x), 0)
        if not with_ood:
            return p
        return p, (None if self._ood is None else np.full(len(x), self._ood, np.float32))


def _one_hot(task, label, p):
    k = TAXONOMIES[task]
    v = np.full(len(k), (1 - p) / (len(k) - 1))
    v[k.index(label)] = p
    return v


def _pipeline(stages):
    from pipelines.pipeline import Pipeline, Stage

    pipe = Pipeline.__new__(Pipeline)
    pipe.stages = [Stage(t, _FixedClassifier(t, pr), when, minc) for t, pr, when, minc in stages]
    return pipe


def test_cascade_refines_routes_and_marks_unidentified():
    crops = [np.zeros((20, 20, 3), np.uint8)]
    lymph = {"lymphocyte", "reactive_lymphocyte"}
    # wang11 refines pbc8's neutrophil; covid_rl does not run on a neutrophil
    pipe = _pipeline([("pbc8", _one_hot("pbc8", "neutrophil", 0.9), None, 0.5),
                      ("wang11", _one_hot("wang11", "band_neutrophil", 0.6), None, 0.5),
                      ("covid_rl", _one_hot("covid_rl", "covid_rl", 0.9), lymph, 0.5)])
    [(label, score, classes, _)], _ = pipe.classify(crops)
    assert label == "band_neutrophil" and set(classes) == {"pbc8", "wang11"}
    # lymphocyte goes on to covid_rl, which refines it
    pipe = _pipeline([("pbc8", _one_hot("pbc8", "lymphocyte", 0.95), None, 0.5),
                      ("wang11", _one_hot("wang11", "lymphocyte", 0.9), None, 0.5),
                      ("covid_rl", _one_hot("covid_rl", "covid_rl", 0.8), lymph, 0.5)])
    [(label, score, classes, _)], _ = pipe.classify(crops)
    assert label == "covid_rl" and set(classes) == {"pbc8", "wang11", "covid_rl"}
    # disagreement: the more confident verdict wins; erythroblast is kept against a weak lymphocyte
    pipe = _pipeline([("pbc8", _one_hot("pbc8", "erythroblast", 0.9), None, 0.5),
                      ("wang11", _one_hot("wang11", "lymphocyte", 0.6), None, 0.5)])
    assert pipe.classify(crops)[0][0][0] == "erythroblast"
    # low confidence: final label unidentified, but the task entry keeps the top class
    pipe = _pipeline([("pbc8", _one_hot("pbc8", "monocyte", 0.4), None, 0.5)])
    [(label, score, classes, _)], _ = pipe.classify(crops)
    assert label == "unidentified" and classes["pbc8"].label == "monocyte" and score == pytest.approx(0.4)


def test_fuse_probs_is_a_product_of_experts_over_shared_classes():
    from classification.classifier import fuse_probs, refinement_map

    c8, c11 = TAXONOMIES["pbc8"], TAXONOMIES["wang11"]
    m = refinement_map(c11, c8)
    assert m[c11.index("band_neutrophil"), c8.index("neutrophil")] == 1 and m[c11.index("blast")].sum() == 0
    assert m[c11.index("reactive_lymphocyte"), c8.index("lymphocyte")] == 1 and m.sum() == 10
    p8 = np.zeros(8)
    p8[[c8.index(c) for c in ("basophil", "ig", "erythroblast", "neutrophil")]] = [0.5, 0.3, 0.1, 0.1]
    p11 = np.zeros(11)
    p11[[c11.index(c) for c in ("myelocyte", "promyelocyte", "basophil", "band_neutrophil", "blast")]] = [
        0.5, 0.2, 0.1, 0.1, 0.1]
    assert np.allclose(fuse_probs(p8[None], c8, p11[None], c11, 0.0)[0], p8)
    f = fuse_probs(p8[None], c8, p11[None], c11, 1.0)[0]
    # shared classes: target mass 0.9 split as a * q (q: ig 0.7, basophil 0.1, neutrophil 0.1; blast does not vote)
    a = {"basophil": 0.5 * 0.1 / 0.9, "ig": 0.3 * 0.7 / 0.9, "neutrophil": 0.1 * 0.1 / 0.9}
    z = sum(a.values())
    for c, v in a.items():
        assert f[c8.index(c)] == pytest.approx(0.9 * v / z, rel=1e-5)
    assert f[c8.index("erythroblast")] == pytest.approx(0.1) and f.sum() == pytest.approx(1.0)
    assert c8[int(f.argmax())] == "ig" and c8[int(p8.argmax())] == "basophil"
    half = fuse_probs(p8[None], c8, p11[None], c11, 0.5)[0]
    assert f[c8.index("ig")] > half[c8.index("ig")] > p8[c8.index("ig")]
    with pytest.raises(ValueError, match="nothing to fuse"):
        fuse_probs(np.ones((1, 2)) / 2, ["a", "b"], np.ones((1, 1)), ["c"])


def test_cascade_fuses_a_later_stage_into_an_earlier_verdict(tmp_path):
    from core.config import ConfigError
    from pipelines.pipeline import load_pipeline_config

    crops = [np.zeros((20, 20, 3), np.uint8)]
    c8, c11 = TAXONOMIES["pbc8"], TAXONOMIES["wang11"]
    p8 = np.full(8, 0.01)
    p8[c8.index("basophil")], p8[c8.index("ig")] = 0.55, 0.39
    p11 = np.full(11, 0.01)
    p11[c11.index("metamyelocyte")] = 0.9
    plain = _pipeline([("pbc8", p8, None, 0.5), ("wang11", p11, None, 0.5)])
    [(label, _, classes, _)], _ = plain.classify(crops)
    assert classes["pbc8"].label == "basophil" and label == "metamyelocyte"
    fused = _pipeline([("pbc8", p8, None, 0.5), ("wang11", p11, None, 0.5)])
    fused.stages[1].fuse_into, fused.stages[1].fuse_weight = "pbc8", 1.0
    [(label, _, classes, _)], _ = fused.classify(crops)
    assert classes["pbc8"].label == "ig" and classes["pbc8"].score > 0.9 and label == "metamyelocyte"
    assert classes["wang11"].probs == plain.classify(crops)[0][0][2]["wang11"].probs  # the voter is unchanged
    # a later stage routed by the fused verdict: covid_rl only sees lymphoid cells
    p8 = np.full(8, 0.01)
    p8[c8.index("monocyte")], p8[c8.index("lymphocyte")] = 0.5, 0.44
    p11 = np.full(11, 0.01)
    p11[c11.index("lymphocyte")] = 0.9
    pipe = _pipeline([("pbc8", p8, None, 0.5), ("wang11", p11, {"monocyte", "lymphocyte"}, 0.5),
                      ("covid_rl", _one_hot("covid_rl", "normal_lymphocyte", 0.9), {"lymphocyte"}, 0.5)])
    pipe.stages[1].fuse_into = "pbc8"
    [(label, _, classes, _)], _ = pipe.classify(crops)
    assert classes["pbc8"].label == "lymphocyte" and label == "normal_lymphocyte" and "covid_rl" in classes
    # config: fuse_into must name an earlier stage (two-network configs, as the previous release shipped)
    text = ("detector: configs/detector/yolov8n_320_int8.yaml\nclassifiers:\n"
            "  - config: configs/classifier/recipes/pbc8_shufflenet192.yaml\n"
            "  - config: configs/classifier/recipes/wang11_shufflenet2x224.yaml\n"
            "    fuse_into: pbc8\n    fuse_weight: 1.0\n")
    (tmp_path / "ok.yaml").write_text(text)
    cfg = load_pipeline_config(tmp_path / "ok.yaml")
    assert [st["fuse_into"] for st in cfg["classifiers"]] == [None, "pbc8"]
    for old, bad, match in (("fuse_into: pbc8", "fuse_into: wang11", "not the task of an earlier stage"),
                            ("fuse_weight: 1.0", "fuse_weight: -1", r"fuse_weight. must be in \[0.0, inf\]")):
        (tmp_path / "bad.yaml").write_text(text.replace(old, bad))
        with pytest.raises(ConfigError, match=match):
            load_pipeline_config(tmp_path / "bad.yaml")


@pytest.mark.realdata
def test_cascade_shares_the_resize_and_keeps_each_stain_reference(tmp_path):
    """Stages of one input size share the resized crops; each still gets its own stain normalization, so the cascade
    gives every stage exactly what the classifier alone computes."""
    import torch

    from classification.classifier import load_classifier
    from pipelines.pipeline import Pipeline, Stage

    torch.manual_seed(0)
    refs = [{"lab_mean": [200.0, 140.0, 120.0], "lab_std": [30.0, 8.0, 10.0]},
            {"lab_mean": [170.0, 150.0, 110.0], "lab_std": [45.0, 12.0, 14.0]}]
    stages = []
    for k, (task, ref) in enumerate(zip(("pbc8", "wang11"), refs)):
        p = save_checkpoint(tmp_path / f"{task}.pt", build_backbone("tiny_cnn", len(TAXONOMIES[task])), "tiny_cnn",
                            task, TAXONOMIES[task], 24, (0.5,) * 3, (0.2,) * 3, temperature=0.1, stain_reference=ref)
        stages.append(Stage(task, load_classifier(p), None, 0.0))
    pipe = Pipeline.__new__(Pipeline)
    pipe.stages = stages
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 30), (55, 55), (20, 70))]
    results, _ = pipe.classify(crops)
    for st in stages:
        alone = st.classifier.classify(crops)
        got = np.array([[r[2][st.task].probs[c] for c in st.classifier.classes] for r in results])
        np.testing.assert_allclose(got, alone, atol=1e-4)


def test_real_classification_samples(data_root):
    from classification.data import load_samples

    assert len(load_samples("pbc8", "train")) == 11972
    assert len(load_samples("pbc8", "test")) == 3411
    w = load_samples("wang11", "test")
    labels = {lab for _, lab in w}
    assert "blast" in labels and "reactive_lymphocyte" not in labels
    assert all(p.exists() for p, _ in w[:50])


def test_harmonize_matches_reference_colour_and_keeps_size():
    from classification.harmonize import harmonize, lab_stats

    rng = np.random.default_rng(0)
    ref = [np.clip(rng.normal((230, 200, 190), 15, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(3)]
    mean, std = lab_stats(ref)
    src = np.clip(rng.normal((150, 120, 220), 25, (40, 40, 3)), 0, 255).astype(np.uint8)
    out = harmonize(src, mean, std, zoom=0.5)
    assert out.shape == src.shape and out.dtype == np.uint8
    m2, _ = lab_stats([harmonize(src, mean, std, zoom=1.0)])
    assert np.abs(m2 - mean).max() < 3  # the colour statistics moved onto the reference's


def test_sample_weights_balance_classes_or_class_source_groups():
    from classification.train import sample_weights, val_score

    # class 0: 2 samples of lab a + 6 of lab b; class 1: 4 of lab a
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    g = np.array(["a", "a", "b", "b", "b", "b", "b", "b", "a", "a", "a", "a"])
    w = sample_weights(y, None, 1.0)
    assert w[y == 0].sum() == pytest.approx(0.5) and np.allclose(w[y == 0], w[0])
    assert np.allclose(sample_weights(y, None, 0.0), 1 / 12)
    wg = sample_weights(y, g, 1.0)  # three (class, lab) groups, a third each
    for cls, lab in ((0, "a"), (0, "b"), (1, "a")):
        assert wg[(y == cls) & (g == lab)].sum() == pytest.approx(1 / 3)
    # within lab a's look, class 0 and class 1 now have the same share (by class only: 0.125 vs 0.5)
    assert wg[(y == 0) & (g == "a")].sum() == pytest.approx(wg[(y == 1) & (g == "a")].sum())
    pred = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    assert val_score(pred, y, "accuracy") == pytest.approx(10 / 12)
    assert val_score(pred, y, "mean_class_accuracy") == pytest.approx((1 + 0.5) / 2)


def test_adapt_batchnorm_mixes_statistics_and_keeps_weights():
    import torch

    from classification.models import adapt_batchnorm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(150, 256, (40, 32, 32, 3), dtype=np.uint8)  # a "laboratory" brighter than the training one
    m = build_backbone("tiny_cnn", 3)
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    before = [(b.running_mean.clone(), b.running_var.clone()) for b in bn]
    weights = {k: v.clone() for k, v in m.state_dict().items() if "running" not in k and "num_batches" not in k}
    res0 = adapt_batchnorm(m, x, (0.5,) * 3, (0.25,) * 3, alpha=0.0)
    assert all(torch.allclose(b.running_mean, rm) and torch.allclose(b.running_var, rv)
               for b, (rm, rv) in zip(bn, before))
    assert res0["bn_layers"] == 2 and res0["mean_abs_change_running_mean"] == 0.0
    full = adapt_batchnorm(m, x, (0.5,) * 3, (0.25,) * 3, alpha=1.0)
    adapted = [b.running_mean.clone() for b in bn]
    assert not torch.allclose(adapted[0], before[0][0])
    for b, (rm, rv) in zip(bn, before):  # back to the training statistics for the half-way check
        b.running_mean.copy_(rm), b.running_var.copy_(rv)
    half = adapt_batchnorm(m, x, (0.5,) * 3, (0.25,) * 3, alpha=0.5)
    assert torch.allclose(bn[0].running_mean, (adapted[0] + before[0][0]) / 2, atol=1e-5)
    assert abs(half["mean_abs_change_running_mean"] - full["mean_abs_change_running_mean"] / 2) < 1e-4
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in weights.items())  # weights untouched
    assert not m.training and all(b.momentum == 0.1 for b in bn)
    with pytest.raises(ValueError, match="no batch-norm"):
        adapt_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), x, (0.5,) * 3, (0.25,) * 3)


def test_adapt_classifier_tool_writes_adapted_checkpoint(tmp_path, tiny_models):
    import torch

    from classification.classifier import Classifier
    from core.io import write_image
    from tools.adapt_classifier import main

    cells = tmp_path / "cells"
    cells.mkdir()
    rng = np.random.default_rng(1)
    for i in range(30):
        write_image(cells / f"c{i}.png", rng.integers(120, 256, (40, 40, 3), dtype=np.uint8))
    (cells / "broken.png").write_bytes(b"not an image")
    src = tiny_models["pbc8_ckpt"]
    out = tmp_path / "adapted.pt"
    assert main(["--weights", str(src), "--cells", str(cells), "--out", str(out), "--min-crops", "100"]) == 2
    assert not out.exists()  # too few crops: nothing written
    assert main(["--weights", str(src), "--cells", str(cells), "--out", str(src)]) == 2  # never overwrites
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    assert main(["--weights", str(tmp_path / "m.onnx"), "--cells", str(cells), "--out", str(out)]) == 2
    assert main(["--weights", str(src), "--cells", str(cells), "--out", str(out), "--alpha", "1.5"]) == 2
    assert main(["--weights", str(src), "--cells", str(cells), "--out", str(out), "--min-crops", "20",
                 "--alpha", "0.7"]) == 0
    a, b = Classifier(src), Classifier(out)
    assert b.meta["adaptation"]["alpha"] == 0.7 and b.meta["adaptation"]["crops"] == 30
    assert b.classes == a.classes and b.temperature == a.temperature
    sa, sb = torch.load(src, weights_only=False)["state_dict"], torch.load(out, weights_only=False)["state_dict"]
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if "running_mean" in k)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "running" not in k and "num_batches" not in k)
    crops = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(4)]
    assert b.classify(crops).shape == (4, len(a.classes))


def test_adapt_classifier_run_crops_frames_wbc_detections(tmp_path):
    import json

    from core.io import write_image
    from tools.adapt_classifier import run_crops

    write_image(tmp_path / "f.png", np.full((100, 120, 3), 200, np.uint8))
    recs = [{"path": str(tmp_path / "f.png"), "cells": [{"box": [40, 40, 60, 60], "det_label": "WBC"},
                                                      {"box": [0, 0, 10, 10], "det_label": "RBC"},
                                                      {"box": [90, 70, 110, 90], "det_label": "WBC"}]},
            {"path": str(tmp_path / "gone.png"), "cells": [{"box": [0, 0, 20, 20], "det_label": "WBC"}]},
            {"path": str(tmp_path / "f.png"), "cells": []}]
    (tmp_path / "fields.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    notes = []
    crops = run_crops(tmp_path, {"WBC"}, 0.75, log=notes.append)
    assert [c.shape for c in crops] == [(50, 50, 3), (50, 50, 3)]  # 20 px box * (1 + 2 * 0.75)
    assert any("gone.png" in n for n in notes) and any("1 field(s)" in n for n in notes)


def _smear_crop(background, size: int = 64) -> np.ndarray:
    """A drawn cell crop: a ``background`` RGB field with pale pink red cells and a purple leukocyte."""
    import cv2

    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    for cx, cy in ((10, 12), (52, 50), (50, 10)):
        cv2.circle(img, (cx, cy), 9, (225, 170, 175), -1)
    cv2.circle(img, (size // 2, size // 2), 14, (150, 90, 170), -1)
    cv2.circle(img, (size // 2, size // 2), 8, (90, 40, 130), -1)
    return img


def test_white_balance_undoes_a_cast_beyond_the_reference_and_leaves_the_range_alone():
    from classification.preprocess import background_white, white_balance

    ref = (254.0, 230.0, 205.0)  # the most tinted training background (cream)
    clean = _smear_crop(ref)[None]
    np.testing.assert_allclose(background_white(clean)[0], ref, atol=1.0)
    assert white_balance(clean, ref) is clean  # at the reference: unchanged
    neutral = _smear_crop((242, 236, 236))[None]  # between neutral and the reference: unchanged
    assert white_balance(neutral, ref) is neutral
    yellow = np.clip(clean * np.array([1.0, 0.9, 0.55]) + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(yellow.astype(int) - clean).max() > 40
    back = white_balance(yellow, ref)
    assert back.shape == yellow.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - clean).max() <= 3  # the cell's colours come back with the background's
    blue = np.clip(clean * np.array([0.6, 0.8, 1.0]) + 0.5, 0, 255).astype(np.uint8)
    w = background_white(white_balance(blue, ref))[0]
    assert w[0] / w.max() > 0.99 and w[1] / w.max() >= 0.9 - 0.01  # brought back into the range (red no longer short)


def test_white_balance_setting_reaches_the_classifier_and_is_validated(tmp_path, tiny_models):
    from conftest import write_yaml

    from classification.classifier import load_classifier
    from classification.preprocess import resize_crops, white_balance
    from core.config import ConfigError
    from pipelines.pipeline import Pipeline, load_pipeline_config

    ref = [254, 230, 205]
    p = load_classifier(tiny_models["pbc8_ckpt"], white_balance=ref)
    crops = [np.clip(_smear_crop(ref) * np.array([1.0, 0.9, 0.55]), 0, 255).astype(np.uint8)]
    plain = load_classifier(tiny_models["pbc8_ckpt"])
    assert p.name.endswith(":wb254/230/205") and plain.white_reference is None
    np.testing.assert_array_equal(p.preprocess(crops), white_balance(resize_crops(crops, 32), ref))
    assert not np.array_equal(p.preprocess(crops), plain.preprocess(crops))

    base = load_pipeline_config(tiny_models["pipeline"])
    cfg = {"detector": str(tiny_models["detector"]), "cells_reframe": False,
           "classifiers": [{"config": str(tiny_models["dir"] / "pbc8.yaml"), "white_balance": ref}]}
    pipe = Pipeline(load_pipeline_config(write_yaml(tmp_path / "wb.yaml", cfg)), log=lambda m: None)
    assert pipe.stages[0].classifier.white_reference == tuple(float(v) for v in ref)
    assert base["classifiers"][0]["cfg"]["white_balance"] is None
    for bad in ([254, 230], [0, 230, 205], "white"):
        with pytest.raises(ConfigError, match="white_balance"):
            load_pipeline_config(write_yaml(tmp_path / "bad.yaml", {**cfg, "classifiers": [
                {"config": str(tiny_models["dir"] / "pbc8.yaml"), "white_balance": bad}]}))


def test_every_classifier_config_and_recipe_validates():
    """Every shipped classifier config and training recipe passes the schema tools/train_classifier.py checks (an
    unknown or mistyped key fails here, not an hour into a run), and a recipe stage's ``init_from`` names a recipe
    that exists."""
    from pathlib import Path

    from classification.classifier import check_classifier_config
    from core.config import load_yaml

    root = Path(__file__).resolve().parent.parent / "configs" / "classifier"
    paths = sorted(root.glob("*.yaml")) + sorted((root / "recipes").glob("*.yaml"))
    assert len(paths) > 20
    for p in paths:
        cfg = check_classifier_config(load_yaml(p), str(p))
        if cfg["init_from"]:
            assert (root / cfg["init_from"]).is_file(), f"{p.name}: init_from {cfg['init_from']} does not exist"
            assert not cfg["pretrained"], f"{p.name}: init_from and pretrained both set"
