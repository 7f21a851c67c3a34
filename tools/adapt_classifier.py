#!/usr/bin/env python
"""Adapt a classifier to your laboratory's cells: with a few labelled cells (fine-tuning), or without labels
(re-estimating its batch-norm statistics on your crops).

With labels (``--labels``): about 20 labelled cells per class of your lab, as cropped cell images listed in a CSV
(``path,label``, header, paths relative to the CSV: what ``tools/review.py RUN --export-labels DIR`` writes), labels
in any shipped taxonomy's names (pbc8, wang11: ``neutrophil``, ``segmented_neutrophil``, ``lymphocyte``, ...):

  python tools/adapt_classifier.py --labels mylab_labels/labels.csv --out runs/adapted/mylab
  python tools/infer_field.py CAPTURES --config runs/adapted/mylab/pipeline.yaml --out out/mylab_adapted

A stratified ``--holdout`` share of the labelled cells is held back; the network's batch-norm statistics become
your cells' (AdaBN at ``--alpha``), its last ``--blocks`` stages and head are fine-tuned with strong augmentation
(progress bar) beside the training laboratories' rehearsal cells stored in the checkpoint (so that the classes your
labels lack, blasts above all, are not forgotten), the epoch with the best held-back accuracy is kept, and its
familiarity score learns your laboratory (your cells' class means are added). OUT gets ``classifier.pt``, its ONNX
export, ``pipeline.yaml`` (the ``--config`` pipeline with this classifier) and ``card.md`` (accuracy before / after
on the held-back cells). Minutes on a 2-core CPU.

Without labels (``--run`` / ``--cells``):

  python tools/infer_field.py CAPTURES --out out/mylab                     # detect your leukocytes once
  python tools/adapt_classifier.py --weights classification/weights/fine13_lite0_192.pt \
      --run out/mylab --out runs/adapted/pbc8_mylab.pt
  python tools/export_onnx.py --classifier runs/adapted/pbc8_mylab.pt --out runs/adapted/pbc8_mylab.onnx
  python tools/adapt_classifier.py --weights ... --cells mycells/ --out ...   # pre-cropped cell images instead

Networks trained on one laboratory's images (here PBC's CellaVision captures) misread other cameras and stains:
their batch-norm layers normalize with the training images' feature statistics. This tool runs the network over
your unlabelled leukocyte crops (the WBC detections of an infer_field run, framed as the pipeline frames them, or
pre-cropped cells; each also rotated and mirrored) and replaces those statistics by
``alpha * yours + (1 - alpha) * the training lab's`` (AdaBN, Li et al. 2016; alpha 0 = unchanged, 1 = yours only).
Nothing else changes: weights, classes, temperature (not refitted: check calibration on labelled cells of yours).
The checkpoint records what it was adapted on (``adaptation``). Name it (or its ONNX export) as a pipeline
stage's ``weights``.

Use crops of one laboratory's usual mix of cells (hundreds, not a few): the statistics are those of the crops you
give; crops of a single cell type or of a different lab skew them. What either mode did on BCCD, lmu_aml and
Raabin-WBC cells is in docs/RESULTS.md: measure on labelled cells of your own before relying on it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_crops(run: Path, labels: set[str], margin: float, log=print) -> list:
    """Crops of the cells labelled ``labels`` in an infer_field run (``run/fields.jsonl``), framed by
    ``crop_square`` with ``margin``; fields whose image cannot be read are skipped with a note."""
    from core.io import ImageReadError, read_image
    from pipelines.crop import background_colour, crop_square
    from pipelines.results import read_records

    crops, unreadable = [], 0
    for rec in read_records(run):
        boxes = [c["box"] for c in rec.get("cells", []) if c.get("det_label") in labels]
        if not boxes:
            continue
        try:
            img = read_image(rec["path"])
        except ImageReadError as e:
            unreadable += 1
            log(f"note: {rec['path']}: {e}")
            continue
        fill = background_colour(img)
        crops += [crop_square(img, b, margin, fill) for b in boxes]
    if unreadable:
        log(f"note: {unreadable} field(s) could not be read again and were skipped")
    return crops


def cell_crops(inputs: list[str], log=print) -> list:
    """Pre-cropped cell images (files, folders, globs as infer_field takes them)."""
    from pipelines.inputs import expand_inputs
    from core.io import ImageReadError, read_image

    fields, notes = expand_inputs(inputs)
    for n in notes:
        log(f"note: {n}")
    crops = []
    for fi in fields:
        try:
            crops.append(read_image(fi.path))
        except ImageReadError as e:
            log(f"note: {fi.path}: {e}")
    return crops


DEFAULT_WEIGHTS = ROOT / "classification" / "weights" / "fine13_lite0_192.pt"
DEFAULT_CONFIG = ROOT / "configs" / "pipeline" / "default.yaml"


def train_label(name: str, labels: list[str]) -> str:
    """A CSV label as a training label of the network (``labels``: its classes, then coarse labels): names of any
    shipped taxonomy, case and spaces ignored. Raises ``ValueError`` naming the valid ones."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in labels:
        raise ValueError(f"label {name!r} is not one the classifier knows; valid: {sorted(labels)}")
    return key


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="classifier checkpoint (.pt) to adapt (default with --labels: the shipped "
                                      f"{DEFAULT_WEIGHTS.name})")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", help="labels.csv of labelled cell images of your lab (path,label): fine-tune")
    src.add_argument("--run", help="an infer_field output folder (fields.jsonl) on your captures: AdaBN only")
    src.add_argument("--cells", nargs="+", help="pre-cropped cell images: files, folders or globs: AdaBN only")
    ap.add_argument("--out", required=True, help="--labels: output folder; otherwise the adapted checkpoint (.pt), "
                                                 "which must differ from --weights")
    ap.add_argument("--alpha", type=float, default=None, help="share of your crops' batch-norm statistics (0-1; "
                                                               "default 0.5; with --labels 0: a few dozen cells of "
                                                               "a few classes skew them)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config whose crop preparation (white "
                                                                   "balance) the adaptation uses; --labels: the "
                                                                   "written pipeline.yaml starts from it")
    ap.add_argument("--holdout", type=float, default=0.3, help="--labels: share of each class held back")
    ap.add_argument("--epochs", type=int, default=40, help="--labels: most fine-tuning epochs (early stop)")
    ap.add_argument("--blocks", type=int, default=2, help="--labels: last stages fine-tuned with the head (rehearsal "
                                                           "needs its cells cut at least this deep: fit_familiarity "
                                                           "--replay-blocks)")
    ap.add_argument("--lr", type=float, default=3e-4, help="--labels: peak learning rate (1e-3 fitted BCCD better "
                                                            "but forgot PBC and blasts)")
    ap.add_argument("--distill", type=float, default=0.3, help="--labels: weight of keeping the shipped network's "
                                                                 "answers on your cells (learning without "
                                                                 "forgetting; 0 = off; with the rehearsal below, "
                                                                 "1.0 kept its errors on a new lab's eosinophils)")
    ap.add_argument("--replay-weight", type=float, default=1.0,
                    help="--labels: weight of rehearsing the training laboratories' cells stored in the checkpoint "
                         "(tools/fit_familiarity.py), so that classes your labels lack are kept (0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels-det", nargs="+", default=["WBC"], dest="det_labels",
                    help="--run: detector labels to crop (default WBC)")
    ap.add_argument("--crop-margin", type=float, default=0.75, help="--run: crop margin (the pipeline's default)")
    ap.add_argument("--min-crops", type=int, default=100, help="AdaBN only: refuse fewer crops (default 100)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the card's command: every option as given

    def err(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    weights = Path(args.weights) if args.weights else (DEFAULT_WEIGHTS if args.labels else None)
    if weights is None:
        return err("give --weights (the .pt checkpoint to adapt)")
    out = Path(args.out)
    if not weights.is_file():
        return err(f"weights not found: {weights}")
    if weights.suffix.lower() == ".onnx":
        return err(f"{weights}: give the .pt checkpoint (export the adapted one with tools/export_onnx.py)")
    alpha = args.alpha if args.alpha is not None else (0.0 if args.labels else 0.5)
    if not 0.0 <= alpha <= 1.0:
        return err(f"--alpha must be in [0, 1], not {alpha}")
    if args.labels:
        if not Path(args.labels).is_file():
            return err(f"labels CSV not found: {args.labels}")
        if not 0.0 < args.holdout < 1.0:
            return err(f"--holdout must be in (0, 1), not {args.holdout}")
        if out.exists() and any(out.iterdir()):
            return err(f"{out} exists and is not empty (nothing is overwritten)")
        return adapt_with_labels(args, weights, out, alpha, err)
    if out.resolve() == weights.resolve():
        return err("--out must differ from --weights (the original stays as it is)")
    if args.run and not (Path(args.run) / "fields.jsonl").is_file():
        return err(f"{args.run}: no fields.jsonl (run tools/infer_field.py on your captures first)")

    import torch

    from classification.models import adapt_batchnorm

    clf = configured_classifier(weights, args)
    crops = (run_crops(Path(args.run), set(args.det_labels), args.crop_margin) if args.run
             else cell_crops(args.cells))
    if len(crops) < args.min_crops:
        return err(f"{len(crops)} crops found, fewer than --min-crops {args.min_crops}: statistics from so few cells "
                   "would not describe your laboratory")
    x = clf.preprocess(crops)  # resized and stain-normalized as at inference
    try:
        shift = adapt_batchnorm(clf.model, x, clf.meta["mean"], clf.meta["std"], alpha, args.batch)
    except ValueError as e:
        return err(f"{weights}: {e}")
    ck = {**clf.meta, "state_dict": {k: v.detach().cpu() for k, v in clf.model.state_dict().items()}}
    ck["adaptation"] = {"method": "batch-norm statistics (AdaBN)", "alpha": alpha, "crops": len(crops),
                        "views_per_crop": 4, "source": str(args.run or " ".join(args.cells)),
                        "from_weights": weights.name, "date": datetime.date.today().isoformat()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, out)
    print(json.dumps({"out": str(out), "crops": len(crops), "alpha": alpha, **shift}))
    return 0


def configured_classifier(weights: Path, args):
    """The PyTorch classifier at ``weights``, preparing crops as ``args.config``'s first stage of its task does
    (its ``white_balance``): the adapted network sees the cells as that pipeline will give them."""
    from classification.classifier import Classifier
    from pipelines.pipeline import load_pipeline_config

    clf = Classifier(weights, batch=args.batch)
    white = next((st["cfg"]["white_balance"] for st in load_pipeline_config(args.config)["classifiers"]
                  if st["cfg"]["task"] == clf.task), None)
    clf.white_reference = None if white is None else tuple(float(v) for v in white)
    return clf


def adapt_with_labels(args, weights: Path, out: Path, alpha: float, err) -> int:
    """The ``--labels`` mode: AdaBN + fine-tuning on the labelled cells, then OUT/{classifier.pt, classifier.onnx,
    pipeline.yaml, card.md}."""
    import numpy as np
    import torch
    import yaml
    from tqdm import tqdm

    from classification.adapt import fine_tune, lab_class_means, split_holdout
    from classification.classifier import export_onnx
    from classification.data import load_label_csv
    from classification.models import adapt_batchnorm
    from classification.taxonomies import label_sets
    from classification.train import train_labels
    from core.config import load_yaml
    from core.io import ImageReadError, read_image

    clf = configured_classifier(weights, args)
    labels = train_labels(clf.task)
    try:
        samples = [(p, train_label(lab, labels)) for p, lab in load_label_csv(args.labels)]
    except ValueError as e:
        return err(str(e))
    images, names = [], []
    for p, lab in samples:
        try:
            images.append(read_image(p))
            names.append(lab)
        except ImageReadError as e:
            print(f"note: {p}: {e} (skipped)", file=sys.stderr)
    if len(images) < 4:
        return err(f"{len(images)} readable labelled cells in {args.labels}: too few to adapt on")
    x = clf.preprocess(images)
    y = np.array([labels.index(n) for n in names])
    sets = label_sets(labels, clf.classes)
    tr, held = split_holdout(names, args.holdout, args.seed)
    mean, std = clf.meta["mean"], clf.meta["std"]

    def accuracy_by_label(idx) -> dict:
        if not len(idx):
            return {}
        pred = clf.classify_prepared(x[idx]).argmax(1)
        right = sets[y[idx], pred].astype(bool)
        per = {lab: round(float(right[np.asarray(names)[idx] == lab].mean()), 4)
               for lab in sorted(set(np.asarray(names)[idx].tolist()))}
        return {"accuracy": round(float(right.mean()), 4), "mean_class_accuracy":
                round(float(np.mean(list(per.values()))), 4), "per_label": per, "n": int(len(idx))}

    before = accuracy_by_label(held)
    print(f"{len(images)} labelled cells ({len(tr)} to train, {len(held)} held back); held-back accuracy before: "
          f"{before.get('accuracy')}", flush=True)
    shift = adapt_batchnorm(clf.model, x, mean, std, alpha, args.batch) if alpha > 0 else {}
    after_bn = accuracy_by_label(held)
    bar = tqdm(total=args.epochs, desc="fine-tune", unit="epoch")

    def progress(epoch, total, rec):
        bar.update(1)
        bar.set_postfix(loss=rec["loss"], held=rec["held_accuracy"])

    replay = clf.meta.get("replay") if args.replay_weight > 0 else None
    if replay is not None and (args.blocks > int(replay["blocks"]) or alpha > 0
                               or replay.get("label_names", labels) != labels):
        print(f"note: no rehearsal of the training laboratories' cells: they are stored for at most "
              f"{replay['blocks']} stages, the network's own batch-norm statistics and its label list (--blocks "
              f"{args.blocks}, --alpha {alpha})", file=sys.stderr)
        replay = None
    res = fine_tune(clf.model, mean, std, x[tr], y[tr], sets, x[held], y[held], epochs=args.epochs,
                    blocks=args.blocks, lr=args.lr, seed=args.seed, progress=progress, distill=args.distill,
                    replay=replay, replay_weight=args.replay_weight)
    bar.close()
    after = accuracy_by_label(held)
    meta = dict(clf.meta)
    if meta.get("ood"):  # the lab's cells become familiar: its class means join the training labs'
        feats, probs = clf.features_prepared(x, with_probs=True)
        pred = probs.argmax(1)
        fine = np.where(y < len(clf.classes), y, pred)
        meta["ood"] = {**meta["ood"], "means": meta["ood"]["means"] + lab_class_means(feats, fine)}
    meta["adaptation"] = {"method": "AdaBN + fine-tuning of the last stages on labelled cells", "alpha": alpha,
                          "bn_shift": shift, "labels_csv": str(Path(args.labels).resolve()), "cells": len(images),
                          "train": int(len(tr)), "held_back": int(len(held)), "blocks": args.blocks,
                          "distill": args.distill, "lr": args.lr,
                          "replay": None if replay is None else {"cells": len(replay["y"]),
                                                                 "weight": args.replay_weight},
                          "epochs_run": len(res["history"]), "best_epoch": res["best_epoch"],
                          "from_weights": weights.name,
                          "held_back_before": before, "held_back_after_adabn": after_bn,
                          "held_back_after": after, "history": res["history"],
                          "date": datetime.date.today().isoformat()}
    out.mkdir(parents=True, exist_ok=True)
    pt = out / "classifier.pt"
    torch.save({**meta, "state_dict": {k: v.detach().cpu() for k, v in clf.model.state_dict().items()}}, pt)
    onnx_path = export_onnx(pt, out / "classifier.onnx")
    cfg = load_yaml(args.config)
    replaced = 0
    for st in cfg.get("classifiers", []):
        st_cfg = load_yaml(ROOT / st["config"] if not Path(st["config"]).is_absolute() else st["config"])
        if st_cfg.get("task") == clf.task:
            st["weights"] = str(onnx_path.resolve())
            replaced += 1
    if not replaced:
        return err(f"{args.config}: no classifier stage of task {clf.task} to point at the adapted weights")
    (out / "pipeline.yaml").write_text(f"# {args.config} with the classifier adapted by tools/adapt_classifier.py "
                                       f"--labels {args.labels} ({datetime.date.today().isoformat()})\n"
                                       + yaml.safe_dump(cfg, sort_keys=False))
    guard = held_confidence(out / "pipeline.yaml", [images[i] for i in held])
    (out / "card.md").write_text(card(meta["adaptation"], weights, args, guard))
    print(json.dumps({"out": str(out), "held_back_before": before.get("accuracy"),
                      "held_back_after_adabn": after_bn.get("accuracy"), "held_back_after": after.get("accuracy"),
                      "pipeline": str(out / "pipeline.yaml")}))
    return 0


def held_confidence(pipeline_yaml: Path, held_images: list) -> dict:
    """What the smear-level confidence guard will see on this laboratory: the mean score of the held-back cells
    through the adapted pipeline, against its ``domain_shift_min_confidence``."""
    from pipelines.pipeline import Pipeline, load_pipeline_config

    cfg = load_pipeline_config(pipeline_yaml)
    scores = [v.score for v in Pipeline(cfg, log=lambda m: None).classify(held_images)[0] if v.score is not None]
    return {"held_cells": len(scores), "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
            "min_confidence": cfg["differential"]["domain_shift_min_confidence"]}


def card(a: dict, weights: Path, args, guard: dict) -> str:
    """The adapted classifier's card: what it was adapted on, its accuracy before / after, and what the confidence
    guard will see (``held_confidence``)."""
    rows = []
    for lab in sorted(a["held_back_after"].get("per_label", {})):
        rows.append(f"| {lab} | {a['held_back_before']['per_label'].get(lab)} | "
                    f"{a['held_back_after_adabn']['per_label'].get(lab)} | {a['held_back_after']['per_label'][lab]} |")
    b, m, f = a["held_back_before"], a["held_back_after_adabn"], a["held_back_after"]
    rehearsal = (f" beside {a['replay']['cells']} rehearsal cells of the training laboratories (weight "
                 f"{a['replay']['weight']:g})" if a.get("replay") else
                 ", without rehearsal of the training laboratories")
    kept = (f"epoch {a['best_epoch']} kept (the best on the held-back cells)" if a.get("best_epoch") else
            "no fine-tuning epoch beat the starting point on the held-back cells, so none is kept (the familiarity "
            "score still learns your cells)")
    return "\n".join([
        f"# Adapted classifier ({a['date']})", "",
        f"From `{weights.name}`, adapted on {a['cells']} labelled cells of `{a['labels_csv']}` ({a['train']} to "
        f"train, {a['held_back']} held back, stratified): AdaBN at alpha {a['alpha']}, then the last {a['blocks']} "
        f"stages and the head fine-tuned for {a['epochs_run']} epochs{rehearsal}; {kept}.", "",
        f"Command: `{shlex.join(['python', 'tools/adapt_classifier.py', *args.argv])}`", "",
        "| held-back cells | before | after AdaBN | adapted |", "|---|---|---|---|",
        f"| accuracy | {b.get('accuracy')} | {m.get('accuracy')} | {f.get('accuracy')} |",
        f"| mean class accuracy | {b.get('mean_class_accuracy')} | {m.get('mean_class_accuracy')} | "
        f"{f.get('mean_class_accuracy')} |", "", "| class | before | after AdaBN | adapted |", "|---|---|---|---|",
        *rows, "", guard_sentence(guard), "",
        "Few held-back cells give wide uncertainty: check the adapted pipeline on more labelled cells of yours.",
        "Classes your labels do not contain are not checked by the held-back cells, and fine-tuning on a few classes "
        "can cost the others (measured, adapting on BCCD's normal cells with three seeds: a network that never saw "
        "BCCD kept 97-100% of lmu_aml's blasts with the rehearsal, 65-99.5% without; docs/RESULTS.md): label every "
        "class your smears show.", ""])


def guard_sentence(g: dict) -> str:
    """The card's line on the smear-level confidence guard (``pipelines.differential.domain_shift``)."""
    if g["mean_score"] is None:
        return "Confidence guard: no held-back cell was classified."
    verdict = ("below it: smears of this laboratory are likely to stay flagged; label more cells (every class), adapt "
               "again, or review them" if g["mean_score"] < g["min_confidence"] else
               "above it. A smear's mean depends on its mix of cells (neutrophils, between band and segmented, score "
               "lower than these class-balanced cells; measured on BCCD: held-back 0.88, test fields 0.82): check the "
               "flags of the re-run")
    return (f"Confidence guard: the held-back cells' mean score through the adapted pipeline is {g['mean_score']:.3f} "
            f"({g['held_cells']} cells); a smear is flagged `domain_shift` when its mean is below "
            f"`domain_shift_min_confidence` {g['min_confidence']:g}: {verdict}.")


if __name__ == "__main__":
    sys.exit(main())
