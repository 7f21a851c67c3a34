"""Classifier backbones by name (timm and torchvision), and the checkpoint format.

``BACKBONES`` is the registry: name -> (library, model name, default input size). Every model is built with
``pretrained=False`` unless the config names a local checkpoint (opt-in for users with downloaded weights).
"""

from __future__ import annotations

import datetime
from pathlib import Path

# name: (library, model name in that library, default input size in px)
BACKBONES: dict[str, tuple[str, str, int]] = {
    "xception71": ("timm", "xception71.tf_in1k", 299),       # Rodellar et al. 2022 (covid_rl)
    "legacy_xception": ("timm", "legacy_xception", 299),
    "vgg16": ("timm", "vgg16", 224),                          # Acevedo et al. 2019
    "inception_v3": ("timm", "inception_v3", 299),
    "efficientnet_b0": ("timm", "efficientnet_b0", 224),
    "resnet18": ("timm", "resnet18", 224),
    "resnet50": ("timm", "resnet50", 224),
    "mobilenetv3_small": ("timm", "mobilenetv3_small_100", 224),
    "shufflenet_v2": ("torchvision", "shufflenet_v2_x1_0", 224),
    "shufflenet_v2_x2": ("torchvision", "shufflenet_v2_x2_0", 224),  # 4.3x the parameters, ~2.1x the CPU step time
    "tiny_cnn": ("local", "tiny_cnn", 64),                    # tests only: a few thousand parameters
}

CHECKPOINT_KEYS = ("arch", "task", "classes", "input_size", "mean", "std", "temperature", "state_dict", "training",
                   "metrics", "date")


def build_backbone(arch: str, num_classes: int, pretrained: str | None = None):
    """Build an ``nn.Module`` mapping (N, 3, S, S) float images to (N, num_classes) logits.

    ``pretrained``: optional path of a local state dict (ImageNet etc.) loaded non-strictly before training.
    """
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone '{arch}'; valid: {sorted(BACKBONES)}")
    lib, name, _ = BACKBONES[arch]
    if lib == "local":
        model = _tiny_cnn(num_classes)
    elif lib == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if pretrained:
        import torch

        state = torch.load(pretrained, map_location="cpu")
        own = model.state_dict()
        state = {k: v for k, v in state.get("state_dict", state).items() if k in own and v.shape == own[k].shape}
        if len(state) < len(own) / 2:  # a wrong file must not silently become training from scratch
            raise ValueError(f"pretrained {pretrained}: only {len(state)} of {len(own)} tensors fit {arch}; is it a "
                             "checkpoint of this backbone?")
        model.load_state_dict(state, strict=False)
    return model


def _tiny_cnn(num_classes: int):
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))


def save_checkpoint(path: Path, model, arch: str, task: str, classes: list[str], input_size: int, mean, std,
                    temperature: float = 1.0, training: dict | None = None, metrics: dict | None = None,
                    stain_reference: dict | None = None) -> Path:
    """Write a self-describing classifier checkpoint (see ``CHECKPOINT_KEYS``; ``stain_reference``: optional
    ``{"lab_mean", "lab_std"}``, crops are Reinhard-normalized to it before the network)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": arch, "task": task, "classes": list(classes), "input_size": int(input_size),
                "mean": [float(m) for m in mean], "std": [float(s) for s in std], "temperature": float(temperature),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "training": training or {}, "metrics": metrics or {},
                "stain_reference": ({k: [float(v) for v in stain_reference[k]] for k in ("lab_mean", "lab_std")}
                                    if stain_reference else None),
                "date": datetime.date.today().isoformat()}, path)
    return path


def load_checkpoint(path: Path, device: str = "cpu"):
    """Load a checkpoint; returns ``(model in eval mode, meta dict without state_dict)``."""
    import torch

    ck = torch.load(Path(path), map_location="cpu", weights_only=False)
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise ValueError(f"{path}: not a leukodiff classifier checkpoint (missing {missing})")
    model = build_backbone(ck["arch"], len(ck["classes"]))
    model.load_state_dict(ck["state_dict"])
    model.eval().to(device)
    meta = {k: v for k, v in ck.items() if k != "state_dict"}
    return model, meta
