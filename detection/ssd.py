"""torchvision SSD300-VGG16 with the default-box scales of Wang et al. 2019 (``smin`` 0.2, ``smax`` 0.9).

Default-box scales follow the SSD paper: ``s_k = smin + (smax - smin) (k - 1) / (m - 1)`` for the m = 6 feature
maps (torchvision ``DefaultBoxGenerator(min_ratio, max_ratio)``). torchvision labels are 1..K with 0 the background;
this backend returns the string class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.config import resolve_path
from detection.base import Detections


def build_ssd(cfg: dict):
    """Untrained SSD300-VGG16 with ``len(classes) + 1`` outputs and the config's default-box scales."""
    from torchvision.models.detection import ssd300_vgg16
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    backbone = cfg["pretrained"]  # opt-in local VGG16 ImageNet weights for users who have them
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=len(cfg["classes"]) + 1,
                         score_thresh=cfg["conf"], nms_thresh=cfg["iou"], detections_per_img=cfg["max_det"])
    model.anchor_generator = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]], min_ratio=cfg["smin"],
                                                 max_ratio=cfg["smax"], steps=[8, 16, 32, 64, 100, 300])
    if backbone:
        import torch

        state = torch.load(resolve_path(backbone), map_location="cpu")
        model.backbone.load_state_dict(state, strict=False)
    return model


class SSDDetector:
    """SSD300 inference: images resized to 300 x 300 (torchvision transform), boxes mapped back to originals."""

    def __init__(self, cfg: dict, device: str = "cpu"):
        import torch

        self.cfg, self.classes = cfg, list(cfg["classes"])
        self.model = build_ssd(cfg)
        weights = resolve_path(cfg["weights"])
        if weights is not None:
            if not weights.exists():
                raise FileNotFoundError(f"detector weights not found: {weights}")
            ck = torch.load(weights, map_location="cpu", weights_only=False)
            self.classes = list(ck.get("classes", self.classes))
            self.model.load_state_dict(ck["model"])
        self.device = torch.device(device)
        self.model.eval().to(self.device)
        self.name = f"ssd300:{Path(cfg['weights'] or 'untrained').name}"

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """See the ``detection`` module contract."""
        import torch

        if not images:
            return []
        xs = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255).to(self.device)
              for im in images]
        with torch.inference_mode():
            outs = self.model(xs)
        res = []
        for o in outs:
            keep = o["scores"] >= self.cfg["conf"]
            labels = o["labels"][keep].cpu().numpy()
            res.append(Detections(o["boxes"][keep].cpu().numpy().astype(np.float32),
                                  o["scores"][keep].cpu().numpy().astype(np.float32),
                                  tuple(self.classes[int(c) - 1] for c in labels)))
        return res
