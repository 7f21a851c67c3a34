"""Detector training from a config: Ultralytics for YOLO backends, a plain PyTorch loop for SSD300.

Training data are ``card:split`` names (``bccd:trainval``, ``txl_pbc:train``) read by ``detection.data``; YOLO
training writes them once as an Ultralytics dataset under the run folder. Nothing is downloaded: architectures are
built from yaml, and a pretrained checkpoint is used only when the config's ``pretrained`` names one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from core.config import ConfigError, Field, validate
from core.io import read_image
from detection.data import FieldAnnotation, load_card, read_split, write_yolo_dataset
from detection.ssd import build_ssd
from detection.yolo import ultralytics_offline

TRAIN_SCHEMA = {
    "data": Field(list, ["bccd:trainval", "txl_pbc:train"], "training sets as card:split"),
    "val": Field(list, ["txl_pbc:val"], "model-selection sets as card:split"),
    "test": Field(list, ["bccd:test", "txl_pbc:test"], "sets evaluated for the model card"),
    "epochs": Field(int, 40, "training epochs"),
    "batch": Field(int, 16, "images per step"),
    "lr0": Field(float, 0.01, "initial learning rate (cosine decay to lr0 * lrf)"),
    "lrf": Field(float, 0.01, "final learning-rate fraction"),
    "patience": Field(int, 20, "early stopping: epochs without val improvement"),
    "workers": Field(int, 2, "data-loader processes"),
    "seed": Field(int, 0, "random seed"),
    "hsv_h": Field(float, 0.05, "stain hue jitter (fraction)"),
    "hsv_s": Field(float, 0.6, "saturation jitter (fraction)"),
    "hsv_v": Field(float, 0.4, "brightness jitter (fraction)"),
    "degrees": Field(float, 0.0, "rotation jitter, degrees"),
    "scale": Field(float, 0.5, "scale jitter (magnification differences between labs)"),
    "fliplr": Field(float, 0.5, "horizontal flip probability"),
    "flipud": Field(float, 0.5, "vertical flip probability (smears have no up)"),
    "mosaic": Field(float, 1.0, "mosaic probability"),
    "close_mosaic": Field(int, 10, "last epochs without mosaic"),
    "run_dir": Field(str, "runs/detector", "work folder (dataset copy, checkpoints, logs)"),
}


def read_sets(specs: list[str], classes: list[str]) -> list[FieldAnnotation]:
    """Read and concatenate ``card:split`` sets, keeping only boxes of ``classes``."""
    out = []
    for spec in specs:
        if ":" not in spec:
            raise ConfigError(f"data set '{spec}' must be card:split, e.g. bccd:trainval")
        card, split = spec.split(":", 1)
        for r in read_split(load_card(card), split):
            keep = [i for i, lab in enumerate(r.labels) if lab in classes]
            out.append(FieldAnnotation(r.path, r.width, r.height, [r.boxes[i] for i in keep],
                                       [r.labels[i] for i in keep]))
    return out


def train_yolo(cfg: dict, out: Path, resume: bool = False, device: str = "cpu", name: str = "train") -> Path:
    """Train a YOLO detector; copies the best checkpoint to ``out`` and returns it."""

    ultralytics_offline()
    from ultralytics import YOLO

    t = validate(cfg["train"], TRAIN_SCHEMA, "detector train")
    run_dir = Path(t["run_dir"]).resolve()
    last = run_dir / name / "weights" / "last.pt"
    if resume and last.exists():
        YOLO(str(last)).train(resume=True)
    else:
        data_yaml = write_yolo_dataset({"train": read_sets(t["data"], cfg["classes"]),
                                        "val": read_sets(t["val"], cfg["classes"])}, cfg["classes"], run_dir / "data")
        model = YOLO(cfg["pretrained"] or cfg["model"])
        model.train(data=str(data_yaml), imgsz=cfg["imgsz"], epochs=t["epochs"], batch=t["batch"], lr0=t["lr0"],
                    lrf=t["lrf"], cos_lr=True, patience=t["patience"], workers=t["workers"], seed=t["seed"],
                    deterministic=True, hsv_h=t["hsv_h"], hsv_s=t["hsv_s"], hsv_v=t["hsv_v"], degrees=t["degrees"],
                    scale=t["scale"], fliplr=t["fliplr"], flipud=t["flipud"], mosaic=t["mosaic"],
                    close_mosaic=t["close_mosaic"], project=str(run_dir), name=name, exist_ok=True, device=device,
                    pretrained=bool(cfg["pretrained"]), amp=False, plots=True, cache="ram", verbose=True)
    best = run_dir / name / "weights" / "best.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best if best.exists() else last, out)
    return out


def train_ssd(cfg: dict, out: Path, resume: bool = False, device: str = "cpu", log=print) -> Path:
    """Train torchvision SSD300-VGG16 (default boxes from ``smin``/``smax``) with SGD, cosine LR, flips and colour
    jitter; checkpoint every epoch (``run_dir/ssd_last.pt``) so ``resume`` continues; best on val loss -> ``out``."""
    import numpy as np
    import torch


    t = validate(cfg["train"], TRAIN_SCHEMA, "detector train")
    torch.manual_seed(t["seed"])
    rng = np.random.default_rng(t["seed"])
    classes = cfg["classes"]
    train_recs, val_recs = read_sets(t["data"], classes), read_sets(t["val"], classes)
    model = build_ssd(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=t["lr0"], momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = max(1, len(train_recs) // t["batch"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, t["epochs"] * steps_per_epoch, eta_min=t["lr0"] * t["lrf"])
    run_dir = Path(t["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, start, best = run_dir / "ssd_last.pt", 0, float("inf")
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        start, best = state["epoch"] + 1, state["best"]

    def sample(rec, augment):
        img = read_image(rec.path)
        boxes = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
        if augment:
            h, w = img.shape[:2]
            if rng.random() < t["fliplr"]:
                img, boxes = img[:, ::-1], np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            if rng.random() < t["flipud"]:
                img, boxes = img[::-1], np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)
            hsv_gain = 1 + rng.uniform(-1, 1, 3) * [t["hsv_h"], t["hsv_s"], t["hsv_v"]]
            img = np.clip(img.astype(np.float32) * hsv_gain[[2, 1, 0]] ** 0.5, 0, 255).astype(np.uint8)
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float().div(255).to(device)
        target = {"boxes": torch.from_numpy(boxes.reshape(-1, 4)).to(device),
                  "labels": torch.tensor([classes.index(lab) + 1 for lab in rec.labels], dtype=torch.int64,
                                         device=device)}
        return x, target

    for epoch in range(start, t["epochs"]):
        model.train()
        order, t0, total = rng.permutation(len(train_recs)), time.time(), 0.0
        for s in range(steps_per_epoch):
            xs, ts = zip(*(sample(train_recs[i], True) for i in order[s * t["batch"]:(s + 1) * t["batch"]]))
            losses = model(list(xs), list(ts))
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        with torch.no_grad():  # SSD returns losses only in train mode; BN-free VGG makes this a clean val loss
            val = sum(float(sum(model([x], [tt]).values())) for x, tt in (sample(r, False) for r in val_recs))
        val /= max(1, len(val_recs))
        if val < best:
            best = val
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "classes": classes, "smin": cfg["smin"], "smax": cfg["smax"],
                        "epoch": epoch, "val_loss": val}, out)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch, "best": best}, ckpt)
        log(json.dumps({"epoch": epoch + 1, "train_loss": round(total / steps_per_epoch, 4), "val_loss": round(val, 4),
                        "s": round(time.time() - t0, 1)}))
    if not out.exists():
        torch.save({"model": model.state_dict(), "classes": classes, "smin": cfg["smin"], "smax": cfg["smax"]}, out)
    return out
