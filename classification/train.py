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

from classification.harmonize import lab_stats, stain_normalize
from classification.metrics import fit_temperature, softmax, summarize
from classification.models import BACKBONES, build_backbone, group_norm_model, normalization, save_checkpoint
from classification.preprocess import MEAN, STD, normalize, to_tensor
from classification.schema import TRAIN_SCHEMA
from classification.taxonomies import COARSE_LABELS, check_task, label_sets
from core.config import validate

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
    if cfg.get("stain_vectors", 0.0) > 0:
        x = stain_vector_jitter(x.clamp_(0, 1), cfg["stain_vectors"], gen)
    if cfg.get("tint", 0.0) > 0:
        x = background_tint(x.clamp_(0, 1), cfg["tint"], gen)
    return degrade(x.clamp_(0, 1), cfg, gen)


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density, as in skimage's rgb2hed.
HED_FROM_RGB_INV = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def _stain_basis(dtype):
    """Ruifrok & Johnston's stain vectors as unit rows (3 stains x 3 channels) and the matrix that unmixes optical
    density into their concentrations."""
    import torch

    m = torch.tensor(HED_FROM_RGB_INV, dtype=dtype)
    m = m / m.norm(dim=1, keepdim=True)
    return m, torch.linalg.inv(m)


def _optical_density(x):
    """(N, 3, S, S) in [0, 1] -> optical density per pixel, (N, S * S, 3)."""
    import torch

    return -torch.log(x.clamp(1e-3, 1)).flatten(2).transpose(1, 2)


def _from_optical_density(od, shape):
    """(N, S * S, 3) optical density -> an image batch of ``shape`` in [0, 1]."""
    import torch

    return torch.exp(-od).transpose(1, 2).reshape(shape).clamp(0, 1)


def hed_jitter(x, strength: float, gen):
    """Stain augmentation in HED optical-density space (Tellez et al. 2018): RGB -> optical density -> stain
    concentrations, each scaled by 1 +- strength and shifted by +- strength / 2 per image, and back. (N, 3, S, S) in
    [0, 1]."""
    import torch

    n = x.shape[0]
    m, inv = _stain_basis(x.dtype)
    conc = _optical_density(x) @ inv
    a = 1 + (torch.rand(n, 1, 3, generator=gen) * 2 - 1) * strength
    b = (torch.rand(n, 1, 3, generator=gen) * 2 - 1) * strength / 2
    return _from_optical_density((conc * a + b) @ m, x.shape)


def scale_stain(x, stain: int, factor: float):
    """Every crop with one stain's concentration (0 haematoxylin, 1 eosin, 2 DAB; Ruifrok & Johnston's vectors)
    multiplied by ``factor``: a stronger or weaker stain, its colour unchanged. (N, 3, S, S) in [0, 1]."""
    m, inv = _stain_basis(x.dtype)
    conc = _optical_density(x) @ inv
    conc[..., stain] *= factor
    return _from_optical_density(conc @ m, x.shape)


def stain_vector_jitter(x, strength: float, gen):
    """Another laboratory's stain *colours*: each crop's optical density is unmixed with Ruifrok & Johnston's stain
    vectors and mixed again with vectors moved by up to ``strength`` per component (then unit length), so a nucleus
    can turn bluer or more magenta and cytoplasm pinker or greyer, while concentrations (hed_jitter's part) stay;
    white (optical density 0) stays white, a tinted background moves a little. Nucleus optical-density directions of
    the laboratories here lie 7-32 degrees from the haematoxylin vector (docs/RESULTS.md); 0.2 turns the
    haematoxylin vector by 8.6 degrees median, 14.7 at the 95th percentile. (N, 3, S, S) in [0, 1]."""
    import torch

    m, inv = _stain_basis(x.dtype)
    moved = m[None] + (torch.rand(x.shape[0], 3, 3, generator=gen, dtype=x.dtype) * 2 - 1) * strength
    moved = moved.clamp_min(0.0)  # optical densities are absorbances: no stain makes a channel brighter
    moved = moved / moved.norm(dim=2, keepdim=True).clamp_min(1e-6)
    return _from_optical_density(_optical_density(x) @ inv @ moved, x.shape)


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

    return check_task(task) + (COARSE_LABELS if task == "fine13" else [])
