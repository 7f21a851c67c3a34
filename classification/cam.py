"""Grad-CAM (Selvaraju et al. 2017) of a cell's final class: where in the crop the network saw it.

The map is ``ReLU(sum_c w_c A_c)`` over the last convolutional feature maps ``A`` (before global pooling), with
``w_c`` the spatial mean of the gradient of the class score; the class score is the log of the summed probability of
the classes the final label allows (a fine class: itself; ``neutrophil``: band + segmented), so a coarse verdict has
a map too. Maps are normalized to [0, 1] per cell and resized to the network's input size.
"""

from __future__ import annotations

import numpy as np

from classification.preprocess import normalize, to_tensor


def feature_map_and_logits(model, x):
    """``(last convolutional feature maps (N, C, h, w), logits (N, K))`` of a backbone of ``models.BACKBONES``."""
    import torch

    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):  # timm
        a = model.forward_features(x)
        return a, model.forward_head(a)
    if isinstance(model, torch.nn.Sequential):  # tiny_cnn: convolutions, then pool, flatten, linear
        a = model[:-3](x)
        return a, model[-3:](a)
    if hasattr(model, "stage4") and hasattr(model, "conv5"):  # torchvision ShuffleNetV2
        a = model.conv5(model.stage4(model.stage3(model.stage2(model.maxpool(model.conv1(x))))))
        return a, model.fc(a.mean([2, 3]))
    raise ValueError(f"grad-cam: no known feature maps in {type(model).__name__}")


def grad_cam(model, x_uint8: np.ndarray, allowed: np.ndarray, mean, std, batch: int = 32) -> np.ndarray:
    """Grad-CAM maps (N, S, S) float32 in [0, 1] of uint8 NHWC crops prepared at the input size ``S``; ``allowed``
    (N, K) 0/1 marks each crop's target classes. The model is left in eval mode, its weights untouched."""
    import torch
    import torch.nn.functional as F

    model.eval()
    size = x_uint8.shape[1]
    out = []
    for i in range(0, len(x_uint8), batch):
        x = normalize(to_tensor(x_uint8[i:i + batch]), mean, std)
        with torch.enable_grad():
            a, logits = feature_map_and_logits(model, x)
            a.retain_grad()
            logp = torch.log_softmax(logits.float(), 1)
            m = torch.from_numpy(np.asarray(allowed[i:i + batch], np.float32))
            score = torch.logsumexp(logp + torch.log(m.clamp_min(1e-30)), 1).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
        w = a.grad.mean((2, 3), keepdim=True)
        cam = F.relu((w * a).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        hi = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
        out.append((cam / hi).numpy().astype(np.float32))
    for p in model.parameters():
        p.grad = None
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


def overlay(crop_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The crop with its map laid over in a jet colour scale (RGB uint8, the crop's size)."""
    import cv2

    h, w = crop_uint8.shape[:2]
    heat = cv2.applyColorMap((cv2.resize(cam, (w, h)) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (crop_uint8 * (1 - alpha) + heat * alpha).clip(0, 255).astype(np.uint8)
