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

from pipelines.config import Field, REQUIRED, validate

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
    "cell_sets": Field(dict, None, "fine13: {laboratory: labels.csv} labelled cell sets with a split column (e.g. "
                                   "{bccd: runs/cells/bccd/labels.csv} from tools/prepare_cells.py)"),
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
                                      "no class is favoured because another laboratory also provides it; or "
                                      "'class_then_source': classes by balance, then within a class the "
                                      "laboratories by source_balance",
                        choices=("class", "class_source", "class_then_source")),
    "source_balance": Field(float, 0.5, "class_then_source: within a class, laboratory share = count^(1 - this) (0 = "
                                        "natural, 1 = every laboratory alike)"),
    "epoch_samples": Field(int, 0, "samples drawn per epoch (0 = the size of the train set)"),
    "norm": Field(str, "batch", "normalization layers while training: 'batch' (batch norm, statistics learnt), "
                                "'frozen_bn' (batch-norm statistics kept from the pretrained start: eval mode), "
                                "'group' (every batch norm replaced by a GroupNorm with its affine weights)",
                  choices=("batch", "frozen_bn", "group")),
    "select_on": Field(str, "accuracy", "val metric for early stopping and the kept checkpoint: 'accuracy' or "
                                        "'mean_class_accuracy'", choices=("accuracy", "mean_class_accuracy")),
    "patience": Field(int, 6, "early stopping: epochs without a gain of the val select_on score"),
    "seed": Field(int, 0, "random seed (numpy, torch, sampling)"),
    "threads": Field(int, 0, "torch CPU threads (0 = torch default)"),
    "rotate": Field(bool, True, "random rotation by any angle (cells have no orientation)"),
    "scale": Field(float, 0.15, "random zoom +- (magnification differences)"),
    "zoom": Field(list, None, "[low, high]: random zoom drawn log-uniformly in this range instead of 1 +- scale (> 1 "
                              "enlarges the cell: other labs' exports frame cells 1.5-2.3x tighter than PBC's)"),
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
    "hed": Field(float, 0.0, "stain jitter in haematoxylin-eosin-DAB optical-density space (Tellez et al. 2018): "
                             "each channel scaled by 1 +- hed and shifted by +- hed / 2 (other labs' stain batches); "
                             "0 = off"),
    "tint": Field(float, 0.0, "background tint: the bright (background) pixels of each crop get a random colour "
                              "cast of up to this per channel (yellow or grey backgrounds of other cameras); 0 = off"),
    "jpeg": Field(int, 0, "JPEG re-compression of half of each batch at a random quality in [jpeg, 95] (other "
                          "labs' exports); 0 = off"),
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
    if cfg.get("zoom"):
        lo, hi = (math.log(float(v)) for v in cfg["zoom"])
        s = torch.exp(lo + torch.rand(n, generator=gen) * (hi - lo))
    else:
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
    if cfg.get("hed", 0.0) > 0:
        x = hed_jitter(x.clamp_(0, 1), cfg["hed"], gen)
    if cfg.get("tint", 0.0) > 0:
        x = background_tint(x.clamp_(0, 1), cfg["tint"], gen)
    return degrade(x.clamp_(0, 1), cfg, gen)


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density, as in skimage's rgb2hed.
HED_FROM_RGB_INV = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def hed_jitter(x, strength: float, gen):
    """Stain augmentation in HED optical-density space (Tellez et al. 2018): RGB -> optical density -> stain
    concentrations, each scaled by 1 +- strength and shifted by +- strength / 2 per image, and back. (N, 3, S, S) in
    [0, 1]."""
    import torch

    n = x.shape[0]
    m = torch.tensor(HED_FROM_RGB_INV, dtype=x.dtype)
    m = m / m.norm(dim=1, keepdim=True)  # (3 stains, 3 channels), unit rows
    inv = torch.linalg.inv(m)
    od = -torch.log(x.clamp(1e-3, 1)).permute(0, 2, 3, 1)  # N S S 3
    conc = od @ inv
    a = 1 + (torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * strength
    b = (torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * strength / 2
    od = (conc * a + b) @ m
    return torch.exp(-od).permute(0, 3, 1, 2).clamp(0, 1)


def background_tint(x, strength: float, gen):
    """A random per-channel colour cast of up to ``strength`` on each crop's bright pixels (the background between
    cells: other cameras and white balances give yellow, grey or blue backgrounds), fading out on darker pixels."""
    import torch

    n = x.shape[0]
    lum = x.mean(1, keepdim=True)
    mask = ((lum - 0.55) / 0.3).clamp(0, 1)
    cast = (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * strength
    return (x + mask * cast).clamp(0, 1)


def jpeg_degrade(x_uint8: np.ndarray, min_quality: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG re-compression of a random half of uint8 NHWC crops, each at a quality in [min_quality, 95]."""
    import cv2

    out = x_uint8.copy()
    for i in np.flatnonzero(rng.random(len(out)) < 0.5):
        q = int(rng.integers(min_quality, 96))
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(out[i][:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return out


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


def normalize(x, mean=MEAN, std=STD):
    """Float NCHW in [0, 1] -> the network's input (``(x - mean) / std``; see ``models.normalization``)."""
    import torch

    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def predict_logits(model, x_uint8: np.ndarray, batch: int = 256, mean=MEAN, std=STD) -> np.ndarray:
    """Logits of a model on uint8 NHWC crops already at its input size."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x_uint8), batch):
            out.append(model(normalize(to_tensor(x_uint8[i:i + batch]), mean, std)).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def sample_weights(y: np.ndarray, groups: np.ndarray | None, balance: float,
                   source_balance: float | None = None) -> np.ndarray:
    """Sampling probabilities: ``count^-balance`` of each sample's class, or of its (class, group) when ``groups``
    is given (then, at balance 1, every (class, group) pair gets the same share). With ``source_balance`` (and
    ``groups``): classes get ``count^(1 - balance)`` shares, and within a class each group ``count^(1 -
    source_balance)`` of the class's share, split evenly among its samples."""
    if groups is not None and source_balance is not None:
        _, cinv, cn = np.unique(y, return_inverse=True, return_counts=True)
        key = np.char.add(np.char.add(y.astype(str), "|"), groups.astype(str))
        _, ginv, gn = np.unique(key, return_inverse=True, return_counts=True)
        g_share = gn[ginv].astype(np.float64) ** (1 - source_balance)
        g_total = np.zeros(len(cn))  # per class: sum of its groups' shares (each group counted once)
        first = np.unique(ginv, return_index=True)[1]
        np.add.at(g_total, cinv[first], g_share[first])
        w = cn[cinv].astype(np.float64) ** (1 - balance) * g_share / g_total[cinv] / gn[ginv]
        return w / w.sum()
    key = y.astype(str) if groups is None else np.char.add(np.char.add(y.astype(str), "|"), groups.astype(str))
    _, inv, n = np.unique(key, return_inverse=True, return_counts=True)
    w = n[inv].astype(np.float64) ** -balance
    return w / w.sum()


def val_score(pred: np.ndarray, y: np.ndarray, metric: str, sets: np.ndarray | None = None) -> float:
    """Model selection score on val: overall accuracy or the mean of the per-label accuracies of present labels.
    ``sets`` (L, K): a prediction is right when it is one of the classes of the sample's label (coarse labels)."""
    right = (pred == y) if sets is None else sets[y, pred].astype(bool)
    if metric == "accuracy":
        return float(right.mean())
    return float(np.mean([right[y == k].mean() for k in np.unique(y)]))


def set_loss(logits, y, sets, smoothing: float):
    """Cross-entropy on label sets: ``-log`` of the summed probability of the classes allowed by each sample's label
    (``sets`` (L, K) 0/1, row ``y``; a one-class row is the usual cross-entropy), with label smoothing towards the
    uniform distribution."""
    import torch

    logp = torch.log_softmax(logits, 1)
    allowed = torch.logsumexp(logp + torch.log(sets[y].clamp_min(1e-30)), 1)
    return -((1 - smoothing) * allowed + smoothing * logp.mean(1)).mean()


def freeze_bn_stats(model) -> None:
    """Put every batch-norm layer in eval mode (running statistics used and kept, affine weights still trained)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_classifier(cfg: dict, out: Path, data: dict, resume: bool = False, log=print) -> dict:
    """Train ``cfg`` (CLASSIFIER_SCHEMA) on ``data`` = ``{"train": (x, y), "val": (x, y), "test": (x, y) | None}``
    (uint8 NHWC at the input size, int64 labels indexing ``train_labels(task)``; ``"train_groups"``: each train
    sample's source laboratory, needed by ``balance_by: class_source / class_then_source``). Writes the checkpoint
    with temperature and metrics to ``out`` and returns its metrics."""
    import torch

    from classification.metrics import fit_temperature, softmax, summarize
    from classification.models import BACKBONES, build_backbone, group_norm_model, normalization, save_checkpoint
    from classification.taxonomies import check_task, label_sets

    t = validate(cfg["train"], TRAIN_SCHEMA, "classifier train")
    classes = check_task(cfg["task"])
    labels = train_labels(cfg["task"])
    sets_np = label_sets(labels, classes)
    sets = torch.from_numpy(sets_np)
    size = cfg["input_size"] or BACKBONES[cfg["arch"]][2]
    mean, std = normalization(cfg["arch"])
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
    if t["norm"] == "group":
        group_norm_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    n_epoch = t["epoch_samples"] or len(ytr)
    steps_per_epoch = max(1, n_epoch // t["batch"])
    total_steps, warm = t["epochs"] * steps_per_epoch, int(t["warmup_epochs"] * steps_per_epoch)

    def lr_at(step):
        if step < warm:
            return t["lr"] * (step + 1) / warm
        return t["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    counts = np.bincount(ytr, minlength=len(labels)).astype(np.float64)
    by_source = t["balance_by"] in ("class_source", "class_then_source")
    groups = data.get("train_groups") if by_source else None
    if by_source and groups is None:
        raise ValueError(f"balance_by: {t['balance_by']} needs the train samples' sources (data['train_groups'])")
    w = sample_weights(ytr, groups, t["balance"],
                       t["source_balance"] if t["balance_by"] == "class_then_source" else None)
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
    t_start = time.time()
    for epoch in range(start, t["epochs"]):
        model.train()
        if t["norm"] == "frozen_bn":
            freeze_bn_stats(model)
        idx = rng.choice(len(ytr), size=steps_per_epoch * t["batch"], replace=True, p=w)
        t0, tot, correct = time.time(), 0.0, 0
        for s in range(steps_per_epoch):
            b = idx[s * t["batch"]:(s + 1) * t["batch"]]
            xb = jpeg_degrade(xtr[b], t["jpeg"], rng) if t["jpeg"] else xtr[b]
            x = normalize(augment(to_tensor(xb), t, gen), mean, std)
            y = torch.from_numpy(ytr[b])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(x)
            loss = set_loss(logits, y, sets, t["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot += float(loss.detach())
            correct += int(sets[y, logits.argmax(1)].sum())
            if s % 50 == 0:
                log(f"epoch {epoch + 1} step {s}/{steps_per_epoch} loss {tot / (s + 1):.4f} "
                    f"({(time.time() - t0) / (s + 1):.2f} s/step)")
        pred = predict_logits(model, xva, mean=mean, std=std).argmax(1)
        scores = {m: val_score(pred, yva, m, sets_np) for m in ("accuracy", "mean_class_accuracy")}
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
    fine = yva < len(classes)  # temperature and figures on samples with a class of the taxonomy (not coarse labels)
    val_logits = predict_logits(model, xva, mean=mean, std=std)
    temp = fit_temperature(val_logits[fine], yva[fine])
    metrics = {"val": summarize(softmax(val_logits[fine], temp), yva[fine], classes),
               "val_uncalibrated_ece": summarize(softmax(val_logits[fine]), yva[fine], classes)["ece"],
               "temperature": temp}
    if data.get("test") is not None:
        xte, yte = data["test"]
        keep = yte < len(classes)
        metrics["test"] = summarize(softmax(predict_logits(model, xte[keep], mean=mean, std=std), temp), yte[keep],
                                    classes)
    save_checkpoint(out, model, cfg["arch"], cfg["task"], classes, size, mean, std, temp,
                    training={"config": cfg, "history": history, "n_train": int(len(ytr)),
                              "class_counts": {c: int(n) for c, n in zip(labels, counts)}},
                    metrics=metrics, stain_reference=stain, norm=t["norm"])
    return metrics


def train_labels(task: str) -> list[str]:
    """Labels a training sample of ``task`` may carry, in index order: the taxonomy's classes, then (fine13) the
    coarse labels of ``taxonomies.COARSE_LABELS``."""
    from classification.taxonomies import COARSE_LABELS, check_task

    return check_task(task) + (COARSE_LABELS if task == "fine13" else [])
