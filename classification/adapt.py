"""Few-shot adaptation of a classifier to one laboratory from a small labelled set of its cells (Chossegros et al.
2024: > 80% on every target lab with <= 100 labelled images).

Recipe: the last blocks and the head fine-tuned with the batch-norm statistics frozen (a few dozen cells cannot
estimate them; ``models.adapt_batchnorm`` can first mix in the lab's own, off by default), strong augmentation,
label-set loss (labels may be coarse: ``neutrophil``), rehearsal of the training laboratories' cells stored with the
weights (``replay_set``: without it, adapting a network on BCCD's normal cells kept 65-99.5% of lmu_aml's blasts
over three seeds, 26-58% with lighter distillation), early stopping on a held-back part of the labelled cells. The
familiarity score learns the lab: its class means are appended to the checkpoint's (``ood.means``), so that the
lab's cells stop being unfamiliar while the whitening and threshold stay.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from classification.preprocess import normalize, to_tensor
from classification.train import augment, freeze_bn_stats, jpeg_degrade, set_loss

# Augmentation of the few labelled cells: the lab's own look varies less than the training mix, so colour is
# jittered lightly and geometry fully.
ADAPT_AUG = {"rotate": True, "scale": 0.0, "zoom": [0.85, 1.25], "translate": 0.06, "color": 0.15, "stain": 0.04,
             "gamma": 0.0, "hed": 0.03, "tint": 0.05, "blur": 1.0, "resolution": 0.7, "noise": 0.02}


def split_holdout(labels: list[str], share: float, seed: int = 0, min_train: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of sample indices: ``share`` of each label held back (at least one when the label has two or
    more samples, never leaving fewer than ``min_train`` to train on). Returns ``(train, held)`` index arrays."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    labels = np.asarray(labels)
    for lab in sorted(set(labels.tolist())):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        k = min(max(1, round(len(idx) * share)), len(idx) - min_train) if len(idx) > min_train else 0
        held += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.array(sorted(train), int), np.array(sorted(held), int)


def trainable_tail(model, blocks: int):
    """Parameters of the head and the last ``blocks`` stages of a backbone (timm EfficientNet-style ``blocks`` /
    ``conv_head``; otherwise the last ``blocks + 1`` top-level children), the rest frozen. Returns the list."""
    for p in model.parameters():
        p.requires_grad_(False)
    if hasattr(model, "blocks") and hasattr(model, "conv_head"):
        parts = list(model.blocks)[-blocks:] + [model.conv_head, model.bn2, model.get_classifier()]
    else:
        parts = list(model.children())[-(blocks + 1):]
    params = [p for m in parts for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def split_at_tail(model, blocks: int):
    """``(trunk, tail)``: ``tail(trunk(x)) == model(x)``, the cut at the input of the last ``blocks`` stages (the part
    ``trainable_tail`` fine-tunes: timm EfficientNet-style ``blocks``, or the last ``blocks + 1`` children of a
    ``Sequential``). Raises ``ValueError`` for other layouts."""
    import torch

    if hasattr(model, "blocks") and hasattr(model, "conv_head"):
        k = len(model.blocks) - blocks
        if k < 0:
            raise ValueError(f"split_at_tail: {blocks} stages asked, the network has {len(model.blocks)}")

        def trunk(x):
            x = model.bn1(model.conv_stem(x))
            for b in list(model.blocks)[:k]:
                x = b(x)
            return x

        def tail(f):
            for b in list(model.blocks)[k:]:
                f = b(f)
            return model.forward_head(model.bn2(model.conv_head(f)))
        return trunk, tail
    if isinstance(model, torch.nn.Sequential):
        return model[:-(blocks + 1)], model[-(blocks + 1):]
    raise ValueError(f"split_at_tail: no known stage layout in {type(model).__name__}")


def replay_set(model, mean, std, x: np.ndarray, y: np.ndarray, groups: np.ndarray, blocks: int = 2,
               per_class: int = 8, seed: int = 0, batch: int = 64) -> dict:
    """Rehearsal cells of the training laboratories, stored with the weights: up to ``per_class`` cells of each
    (label, laboratory) of ``x`` (uint8 NHWC crops at the network's input size; ``y`` label indices, ``groups`` the
    laboratory of each), kept as the frozen trunk's output at the input of the last ``blocks`` stages (float16
    feature maps, not images). ``fine_tune`` trains on them beside a lab's labelled cells, so that classes the lab
    does not label (blasts, when a lab labels its normal cells) keep being recognized by the part it changes."""
    import torch

    rng = np.random.default_rng(seed)
    pick = []
    for key in sorted(set(zip(y.tolist(), groups.tolist()))):
        idx = np.flatnonzero((y == key[0]) & (groups == key[1]))
        pick += rng.permutation(idx)[:per_class].tolist()
    pick = np.array(sorted(pick), int)
    trunk, _ = split_at_tail(model, blocks)
    model.eval()
    feats = []
    with torch.inference_mode():
        for i in range(0, len(pick), batch):
            feats.append(trunk(normalize(to_tensor(x[pick[i:i + batch]]), mean, std)).half())
    return {"features": torch.cat(feats), "y": y[pick].tolist(), "groups": groups[pick].tolist(), "blocks": blocks,
            "per_class": per_class}


def fine_tune(model, mean, std, x: np.ndarray, y: np.ndarray, sets: np.ndarray, held_x: np.ndarray,
              held_y: np.ndarray, epochs: int = 40, blocks: int = 2, lr: float = 1e-3, batch: int = 32,
              patience: int = 8, seed: int = 0, progress=None, distill: float = 1.0, replay: dict | None = None,
              replay_weight: float = 1.0) -> dict:
    """Fine-tune ``model`` in place on uint8 NHWC crops ``x`` (prepared at its input size) with label indices ``y``
    into ``sets`` (label -> allowed classes, ``taxonomies.label_sets``); the epoch with the best accuracy on the
    held-back crops, ties broken by their likelihood (or the last one without held-back crops), is kept; none
    (``best_epoch`` 0) when no epoch beats the starting network on them.
    ``progress``: a callable ``(epoch, epochs, record)``. ``distill``: weight of the learning-without-forgetting
    term (Li & Hoiem 2016): the KL divergence, at temperature 2, from the starting network's predictions on the same
    augmented crops, so that classes the lab's labels do not show (blasts, when a lab labels normal cells) keep
    their evidence. ``replay``: a ``replay_set`` of the training laboratories (its ``blocks`` at least ``blocks``),
    a batch of which is trained on at every step at ``replay_weight`` (rehearsal: the changed stages keep every
    class). Returns the history and the best held-back accuracy."""
    import torch

    if replay is not None and int(replay["blocks"]) < blocks:
        raise ValueError(f"the replay set is cut {replay['blocks']} stages from the head; {blocks} are fine-tuned")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = copy.deepcopy(model).eval() if distill > 0 else None
    if replay is not None:
        replay_tail, replay_y = split_at_tail(model, int(replay["blocks"]))[1], torch.as_tensor(replay["y"])
    params = trainable_tail(model, blocks)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sets_t = torch.from_numpy(np.asarray(sets, np.float32))
    steps = max(1, math.ceil(len(x) / batch))
    total = epochs * steps

    def held_score() -> tuple[float, float] | None:
        """(accuracy, -NLL of the allowed classes) on the held-back crops: a few dozen cells move the accuracy in
        coarse steps, so the likelihood breaks its ties."""
        if not len(held_x):
            return None
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(normalize(to_tensor(held_x[i:i + 128]), mean, std))
                                for i in range(0, len(held_x), 128)])
        allowed = sets_t[torch.from_numpy(held_y)]
        right = allowed.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
        nll = -torch.log((torch.softmax(logits, 1) * allowed).sum(1).clamp_min(1e-8)).mean()
        return float(right.mean()), -float(nll)

    best, best_state, stale, history, step = held_score(), copy.deepcopy(model.state_dict()), 0, [], 0
    best_epoch = 0
    start = best
    for epoch in range(epochs):
        model.train()
        freeze_bn_stats(model)  # the lab's statistics (AdaBN) stay; a few cells cannot estimate them
        order = rng.permutation(len(x))
        tot = 0.0
        for s in range(steps):
            b = order[s * batch:(s + 1) * batch]
            if len(b) < 2:
                continue
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            xb = normalize(augment(to_tensor(jpeg_degrade(x[b], 60, rng)), ADAPT_AUG, gen), mean, std)
            logits = model(xb)
            loss = set_loss(logits, torch.from_numpy(y[b]), sets_t, 0.05)
            if teacher is not None:
                with torch.no_grad():
                    soft = torch.softmax(teacher(xb) / 2, 1)
                loss = loss + distill * 4 * torch.nn.functional.kl_div(torch.log_softmax(logits / 2, 1), soft,
                                                                       reduction="batchmean")
            if replay is not None:
                r = torch.from_numpy(rng.choice(len(replay_y), min(batch, len(replay_y)), replace=False))
                rl = replay_tail(replay["features"][r].float())
                loss = loss + replay_weight * set_loss(rl, replay_y[r], sets_t, 0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach())
            step += 1
        score = held_score()
        rec = {"epoch": epoch + 1, "loss": round(tot / steps, 4),
               "held_accuracy": None if score is None else round(score[0], 4),
               "held_nll": None if score is None else round(-score[1], 4)}
        history.append(rec)
        if progress:
            progress(epoch + 1, epochs, rec)
        if score is None or best is None or score > best:
            best, best_state, stale, best_epoch = score, copy.deepcopy(model.state_dict()), 0, epoch + 1
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"history": history, "held_accuracy_before_fine_tuning": None if start is None else start[0],
            "held_accuracy": None if best is None else best[0], "best_epoch": best_epoch}


def lab_class_means(features: np.ndarray, classes_idx: np.ndarray, min_cells: int = 2) -> list[list[float]]:
    """Mean feature vector of each class with at least ``min_cells`` of the lab's cells (for ``ood.means``)."""
    out = []
    for k in np.unique(classes_idx):
        m = classes_idx == k
        if m.sum() >= min_cells:
            out.append(features[m].mean(0).astype(np.float32).tolist())
    return out
