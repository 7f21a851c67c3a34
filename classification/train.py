"""Classifier training: class-balanced oversampling with geometric and stain augmentation, AdamW with warm-up and
cosine LR, early stopping on validation accuracy, per-epoch checkpoints (resumable), temperature scaling on val.

Images are decoded once into memory at the input size; augmentation runs on batches in torch (rotation by any
angle, flips, scale, translation, brightness / contrast / saturation / stain-hue jitter, and optionally resolution
loss, blur and noise as other microscopes give).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from pipelines.config import ConfigError, Field, REQUIRED, validate

CLASSIFIER_SCHEMA = {
    "task": Field(str, REQUIRED, "taxonomy: pbc8 | wang11 | covid_rl"),
    "arch": Field(str, REQUIRED, "backbone name, see classification.models.BACKBONES"),
    "weights": Field(str, None, "trained checkpoint (.pt), relative to the repo root; None = no model"),
    "input_size": Field(int, None, "input size in px (default: the backbone's)"),
    "pretrained": Field(str, None, "opt-in local ImageNet checkpoint to start from (users online); never default"),
    "min_confidence": Field(float, 0.5, "below this top-class probability the cell's final label is 'unidentified'"),
    "batch": Field(int, 64, "crops per inference batch"),
    "tta": Field(int, 1, "test-time augmentation views: 1 (off), 2 (+ mirror), 4 (rotations by 90 degrees), 8 "
                         "(rotations and mirror images); probabilities from the views' mean logits"),
    "tta_below": Field(float, 1.0, "extra views only for cells whose single-view top probability is below this "
                                   "(1.0 = every cell)"),
    "train": Field(dict, {}, "training settings, see TRAIN_SCHEMA"),
}

TRAIN_SCHEMA = {
    "sources": Field(list, None, "datasets (pbc, lmu_aml); default: all the task uses"),
    "data_dir": Field(str, None, "folder-per-class dataset with train/ val/ test/ subfolders (own data)"),
    "epochs": Field(int, 30, "maximum epochs"),
    "batch": Field(int, 64, "crops per step"),
    "lr": Field(float, 2e-3, "peak learning rate (AdamW)"),
    "weight_decay": Field(float, 0.05, "AdamW weight decay"),
    "warmup_epochs": Field(float, 1.0, "linear warm-up before cosine decay"),
    "label_smoothing": Field(float, 0.05, "cross-entropy label smoothing"),
    "balance": Field(float, 1.0, "oversampling exponent: sample weight = count^-balance (0 = natural, 1 = balanced)"),
    "balance_by": Field(str, "class", "what balance counts: 'class', or 'class_source': every (class, source "
                                      "laboratory) group gets the same share, harmonized copies counted with the "
                                      "laboratory they are made to look like; so that within one laboratory's look "
                                      "no class is favoured because another laboratory also provides it"),
    "select_on": Field(str, "accuracy", "val metric for early stopping and the kept checkpoint: 'accuracy' or "
                                        "'mean_class_accuracy'"),
    "patience": Field(int, 6, "early stopping: epochs without a gain of the val select_on score"),
    "seed": Field(int, 0, "random seed (numpy, torch, sampling)"),
    "threads": Field(int, 0, "torch CPU threads (0 = torch default)"),
    "rotate": Field(bool, True, "random rotation by any angle (cells have no orientation)"),
    "scale": Field(float, 0.15, "random zoom +- (magnification differences)"),
    "translate": Field(float, 0.08, "random shift, fraction of the size"),
    "color": Field(float, 0.2, "brightness / contrast / saturation jitter"),
    "stain": Field(float, 0.08, "per-channel gain jitter (stain hue differences between labs)"),
    "gamma": Field(float, 0.0, "tone-curve jitter: every crop becomes x ** g, log g uniform in +-log(1 + gamma) (other "
                               "cameras' tone curves, which Reinhard normalization's mean / std leave); 0 = off"),
    "blur": Field(float, 0.0, "Gaussian blur of half of each batch, sigma up to this (px at the input size): focus "
                              "and optics of other microscopes; 0 = off"),
    "resolution": Field(float, 1.0, "half of each batch is sampled down to a random [resolution, 1] of the input size "
                                    "and back up (lower magnification / cameras of other labs); 1 = off"),
    "noise": Field(float, 0.0, "Gaussian pixel noise, std up to this (0-1 scale), on half of each batch; 0 = off"),
    "stain_normalize": Field(bool, False, "Reinhard-normalize every crop (train, val, test and at inference) to the "
                                          "training images' mean Lab colour statistics, so that other labs' stains "
                                          "reach the network looking like the training lab's (stored in the "
                                          "checkpoint as stain_reference)"),
    "run_dir": Field(str, "runs/classifier", "checkpoints and logs"),
    "time_budget_min": Field(float, 0.0, "stop after this many minutes (0 = no limit); best checkpoint kept"),
    "harmonize": Field(dict, None, "{source: reference}: also train (and select) on a copy of every train / val "
                                   "image of source made to look like reference (classification.harmonize), so that "
                                   "a class only one laboratory provides is learnt by morphology"),
}

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def augment(x, cfg: dict, gen):
    """Augment a float batch (N, 3, S, S) in [0, 1] in place of a data loader."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    ang = torch.rand(n, generator=gen) * 2 * math.pi if cfg["rotate"] else torch.zeros(n)
    s = 1 + (torch.rand(n, generator=gen) * 2 - 1) * cfg["scale"]
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * cfg["translate"] * 2
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos * flip, -sin, t[:, 0]], 1), torch.stack([sin * flip, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    c = cfg["color"]
    if c > 0:
        b = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * c
        k = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * c
        sat = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * c
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * k + mean
        gray = x.mean(1, keepdim=True)
        x = (x - gray) * sat + gray
        x = x * b
    if cfg["stain"] > 0:
        x = x * (1 + (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * cfg["stain"])
    if cfg["gamma"] > 0:
        g = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * math.log1p(cfg["gamma"]))
        x = x.clamp_(1e-4, 1) ** g
    return degrade(x.clamp_(0, 1), cfg, gen)


def degrade(x, cfg: dict, gen):
    """Image-quality augmentation of a batch (N, 3, S, S) in [0, 1]: resolution loss, blur and noise, each on a random
    half of the batch at one random strength (every batch stays a clean / degraded mix, so batch-norm statistics do
    not swing between batches)."""
    import torch
    import torch.nn.functional as F

    def half():
        return torch.rand(x.shape[0], generator=gen) < 0.5

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand(1, generator=gen))

    size = x.shape[-1]
    if cfg.get("resolution", 1.0) < 1.0:
        m = half()
        small = max(8, round(size * uniform(cfg["resolution"], 1.0)))
        if m.any() and small < size:
            y = F.interpolate(F.interpolate(x[m], size=small, mode="area"), size=size, mode="bilinear",
                              align_corners=False)
            x = x.clone()
            x[m] = y
    if cfg.get("blur", 0.0) > 0:
        m = half()
        if m.any():
            sigma = uniform(0.3, cfg["blur"])
            r = max(1, math.ceil(2.5 * sigma))
            k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
            k = (k / k.sum()).to(x.device)
            y = F.pad(x[m], (r, r, r, r), mode="reflect")
            y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
            x = x.clone()
            x[m] = F.conv2d(y, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    if cfg.get("noise", 0.0) > 0:
        m = half().view(-1, 1, 1, 1).to(x.dtype)
        x = x + torch.randn(x.shape, generator=gen) * uniform(0.0, cfg["noise"]) * m
    return x.clamp_(0, 1)


def to_tensor(x_uint8: np.ndarray):
    """uint8 NHWC -> float NCHW in [0, 1]."""
    import torch

    return torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float().div_(255)


def normalize(x):
    import torch

    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def predict_logits(model, x_uint8: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of a model on uint8 NHWC crops already at its input size."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x_uint8), batch):
            out.append(model(normalize(to_tensor(x_uint8[i:i + batch]))).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def sample_weights(y: np.ndarray, groups: np.ndarray | None, balance: float) -> np.ndarray:
    """Sampling probabilities: ``count^-balance`` of each sample's class, or of its (class, group) when ``groups``
    is given (then, at balance 1, every (class, group) pair gets the same share)."""
    key = y.astype(str) if groups is None else np.char.add(np.char.add(y.astype(str), "|"), groups.astype(str))
    _, inv, n = np.unique(key, return_inverse=True, return_counts=True)
    w = n[inv].astype(np.float64) ** -balance
    return w / w.sum()


def val_score(pred: np.ndarray, y: np.ndarray, metric: str) -> float:
    """Model selection score on val: overall accuracy or the mean of the per-class accuracies of present classes."""
    if metric == "accuracy":
        return float((pred == y).mean())
    return float(np.mean([(pred[y == k] == k).mean() for k in np.unique(y)]))


def train_classifier(cfg: dict, out: Path, data: dict, resume: bool = False, log=print) -> dict:
    """Train ``cfg`` (CLASSIFIER_SCHEMA) on ``data`` = ``{"train": (x, y), "val": (x, y), "test": (x, y) | None}``
    (uint8 NHWC at the input size, int64 labels; ``"train_groups"``: each train sample's source laboratory, needed by
    ``balance_by: class_source``). Writes the checkpoint with temperature and metrics to ``out`` and
    returns its metrics."""
    import torch

    from classification.metrics import fit_temperature, softmax, summarize
    from classification.models import BACKBONES, build_backbone, save_checkpoint
    from classification.taxonomies import check_task

    t = validate(cfg["train"], TRAIN_SCHEMA, "classifier train")
    if t["balance_by"] not in ("class", "class_source"):
        raise ConfigError(f"classifier train: balance_by must be 'class' or 'class_source', not {t['balance_by']!r}")
    if t["select_on"] not in ("accuracy", "mean_class_accuracy"):
        raise ConfigError(f"classifier train: select_on must be 'accuracy' or 'mean_class_accuracy', "
                          f"not {t['select_on']!r}")
    classes = check_task(cfg["task"])
    size = cfg["input_size"] or BACKBONES[cfg["arch"]][2]
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    torch.manual_seed(t["seed"])
    gen = torch.Generator().manual_seed(t["seed"])
    rng = np.random.default_rng(t["seed"])
    (xtr, ytr), (xva, yva) = data["train"], data["val"]
    stain = None
    if t["stain_normalize"]:
        from classification.harmonize import lab_stats, stain_normalize

        sub = rng.choice(len(xtr), size=min(400, len(xtr)), replace=False)
        lab_mean, lab_std = lab_stats([xtr[i] for i in sub])
        stain = {"lab_mean": lab_mean.tolist(), "lab_std": lab_std.tolist()}
        xtr, xva = stain_normalize(xtr, lab_mean, lab_std), stain_normalize(xva, lab_mean, lab_std)
        if data.get("test") is not None:
            data = {**data, "test": (stain_normalize(data["test"][0], lab_mean, lab_std), data["test"][1])}
        rng = np.random.default_rng(t["seed"])  # the same sampling as without normalization
        log(f"stain normalization to Lab mean {np.round(lab_mean, 1).tolist()} std {np.round(lab_std, 1).tolist()}")
    model = build_backbone(cfg["arch"], len(classes), cfg["pretrained"])
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    steps_per_epoch = max(1, len(ytr) // t["batch"])
    total_steps, warm = t["epochs"] * steps_per_epoch, int(t["warmup_epochs"] * steps_per_epoch)

    def lr_at(step):
        if step < warm:
            return t["lr"] * (step + 1) / warm
        return t["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    counts = np.bincount(ytr, minlength=len(classes)).astype(np.float64)
    groups = data.get("train_groups") if t["balance_by"] == "class_source" else None
    if t["balance_by"] == "class_source" and groups is None:
        raise ValueError("balance_by: class_source needs the train samples' sources (data['train_groups'])")
    w = sample_weights(ytr, groups, t["balance"])
    run = Path(t["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    last, best_path = run / "last.pt", run / "best.pt"
    start, best_acc, stale, step = 0, -1.0, 0, 0
    history = []
    if resume and last.exists():
        st = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"]), opt.load_state_dict(st["opt"])
        start, best_acc, stale, step, history = st["epoch"] + 1, st["best_acc"], st["stale"], st["step"], st["history"]
        rng = np.random.default_rng(t["seed"] + start)
        gen.manual_seed(t["seed"] + start)
        log(f"resumed at epoch {start + 1}, best val {t['select_on']} {best_acc:.4f}")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])
    t_start = time.time()
    for epoch in range(start, t["epochs"]):
        model.train()
        idx = rng.choice(len(ytr), size=steps_per_epoch * t["batch"], replace=True, p=w)
        t0, tot, correct = time.time(), 0.0, 0
        for s in range(steps_per_epoch):
            b = idx[s * t["batch"]:(s + 1) * t["batch"]]
            x = normalize(augment(to_tensor(xtr[b]), t, gen))
            y = torch.from_numpy(ytr[b])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot += float(loss.detach())
            correct += int((logits.argmax(1) == y).sum())
            if s % 50 == 0:
                log(f"epoch {epoch + 1} step {s}/{steps_per_epoch} loss {tot / (s + 1):.4f}")
        pred = predict_logits(model, xva).argmax(1)
        scores = {m: val_score(pred, yva, m) for m in ("accuracy", "mean_class_accuracy")}
        val_acc = scores[t["select_on"]]  # the selection score
        rec = {"epoch": epoch + 1, "loss": round(tot / steps_per_epoch, 4),
               "train_acc": round(correct / (steps_per_epoch * t["batch"]), 4),
               "val_acc": round(scores["accuracy"], 4), "val_mean_class": round(scores["mean_class_accuracy"], 4),
               "s": round(time.time() - t0, 1)}
        history.append(rec)
        log(json.dumps(rec))
        if val_acc > best_acc:
            best_acc, stale = val_acc, 0
            torch.save(model.state_dict(), best_path)
        else:
            stale += 1
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "best_acc": best_acc,
                    "stale": stale, "step": step, "history": history}, last)
        if stale >= t["patience"]:
            log(f"early stop: no val gain for {stale} epochs")
            break
        if t["time_budget_min"] and (time.time() - t_start) / 60 > t["time_budget_min"]:
            log(f"time budget of {t['time_budget_min']} min reached")
            break
    model.load_state_dict(torch.load(best_path, map_location="cpu"))
    val_logits = predict_logits(model, xva)
    temp = fit_temperature(val_logits, yva)
    metrics = {"val": summarize(softmax(val_logits, temp), yva, classes),
               "val_uncalibrated_ece": summarize(softmax(val_logits), yva, classes)["ece"], "temperature": temp}
    if data.get("test") is not None:
        xte, yte = data["test"]
        metrics["test"] = summarize(softmax(predict_logits(model, xte), temp), yte, classes)
    save_checkpoint(out, model, cfg["arch"], cfg["task"], classes, size, MEAN, STD, temp,
                    training={"config": cfg, "history": history, "n_train": int(len(ytr)),
                              "class_counts": {c: int(n) for c, n in zip(classes, counts)}},
                    metrics=metrics, stain_reference=stain)
    return metrics
