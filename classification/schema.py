"""The classifier config schema (``configs/classifier/*.yaml``) and its training settings, in one place so that
inference and training validate the same keys."""

from __future__ import annotations

from core.config import REQUIRED, Field

CLASSIFIER_SCHEMA = {
    "task": Field(str, REQUIRED, "taxonomy: pbc8 | wang11 | covid_rl"),
    "arch": Field(str, REQUIRED, "backbone name, see classification.models.BACKBONES"),
    "weights": Field(str, None, "trained checkpoint (.pt), relative to the repo root; None = no model"),
    "input_size": Field(int, None, "input size in px (default: the backbone's)"),
    "pretrained": Field(str, None, "weights to start training from: package:NAME (ImageNet weights inside a registry "
                                   "package, classification.models.PACKAGE_WEIGHTS) or a local checkpoint (users "
                                   "online); not with init_from"),
    "init_from": Field(str, None, "recipe stage this one continues (a classifier config under configs/classifier/, "
                                  "e.g. recipes/pbc8_shufflenet160.yaml): training starts from its output, "
                                  "runs/classifier/<its file stem>.pt"),
    "min_confidence": Field(float, 0.5, "below this top-class probability the cell's final label is 'unidentified'",
                            min=0.0, max=1.0),
    "batch": Field(int, 64, "crops per inference batch", min=1),
    "tta": Field(int, 1, "test-time augmentation views: 1 (off), 2 (+ mirror), 4 (rotations by 90 degrees), 8 "
                         "(rotations and mirror images); probabilities from the views' mean logits",
                 choices=(1, 2, 4, 8)),
    "tta_below": Field(float, 1.0, "extra views only for cells whose single-view top probability is below this "
                                   "(1.0 = every cell)", min=0.0, max=1.0),
    "white_balance": Field(list, None, "the most tinted background white [R, G, B] of the training laboratories: a "
                                       "crop whose background has a stronger cast (yellow, blue, ...) is corrected "
                                       "to it before the network, others are left as they are "
                                       "(classification.preprocess.white_balance); None = off",
                           min=1.0, max=255.0, size=3),
    "train": Field(dict, {}, "training settings, see TRAIN_SCHEMA"),
}

TRAIN_SCHEMA = {
    "sources": Field(list, None, "datasets (pbc, lmu_aml); default: all the task uses"),
    "cell_sets": Field(dict, None, "fine13: {laboratory: labels.csv} labelled cell sets with a split column (e.g. "
                                   "{bccd: runs/cells/bccd/labels.csv} from tools/prepare_cells.py)"),
    "data_dir": Field(str, None, "folder-per-class dataset with train/ val/ test/ subfolders (own data)"),
    "epochs": Field(int, 30, "maximum epochs", min=1),
    "batch": Field(int, 64, "crops per step", min=2),
    "lr": Field(float, 2e-3, "peak learning rate (AdamW)"),
    "weight_decay": Field(float, 0.05, "AdamW weight decay", min=0.0),
    "warmup_epochs": Field(float, 1.0, "linear warm-up before cosine decay", min=0.0),
    "label_smoothing": Field(float, 0.05, "cross-entropy label smoothing", min=0.0, max=1.0),
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
    "epoch_samples": Field(int, 0, "samples drawn per epoch (0 = the size of the train set)", min=0),
    "norm": Field(str, "batch", "normalization layers while training: 'batch' (batch norm, statistics learnt), "
                                "'frozen_bn' (batch-norm statistics kept from the pretrained start: eval mode), "
                                "'group' (every batch norm replaced by a GroupNorm with its affine weights)",
                  choices=("batch", "frozen_bn", "group")),
    "select_on": Field(str, "accuracy", "val metric for early stopping and the kept checkpoint: 'accuracy' or "
                                        "'mean_class_accuracy'", choices=("accuracy", "mean_class_accuracy")),
    "patience": Field(int, 6, "early stopping: epochs without a gain of the val select_on score", min=1),
    "seed": Field(int, 0, "random seed (numpy, torch, sampling)"),
    "threads": Field(int, 0, "torch CPU threads (0 = torch default)", min=0),
    "rotate": Field(bool, True, "random rotation by any angle (cells have no orientation)"),
    "scale": Field(float, 0.15, "random zoom +- (magnification differences)"),
    "zoom": Field(list, None, "[low, high]: random zoom drawn log-uniformly in this range instead of 1 +- scale (> 1 "
                              "enlarges the cell: other labs' exports frame cells 1.5-2.3x tighter than PBC's)"),
    "translate": Field(float, 0.08, "random shift, fraction of the size", min=0.0, max=0.5),
    "color": Field(float, 0.2, "brightness / contrast / saturation jitter", min=0.0, max=1.0),
    "stain": Field(float, 0.08, "per-channel gain jitter (stain hue differences between labs)", min=0.0, max=1.0),
    "gamma": Field(float, 0.0, "tone-curve jitter: every crop becomes x ** g, log g uniform in +-log(1 + gamma) (other "
                               "cameras' tone curves, which Reinhard normalization's mean / std leave); 0 = off"),
    "blur": Field(float, 0.0, "Gaussian blur of half of each batch, sigma up to this (px at the input size): focus "
                              "and optics of other microscopes; 0 = off"),
    "resolution": Field(float, 1.0, "half of each batch is sampled down to a random [resolution, 1] of the input size "
                                    "and back up (lower magnification / cameras of other labs); 1 = off"),
    "noise": Field(float, 0.0, "Gaussian pixel noise, std up to this (0-1 scale), on half of each batch; 0 = off",
                   min=0.0, max=1.0),
    "hed": Field(float, 0.0, "stain jitter in haematoxylin-eosin-DAB optical-density space (Tellez et al. 2018): "
                             "each channel scaled by 1 +- hed and shifted by +- hed / 2 (other labs' stain batches); "
                             "0 = off"),
    "stain_vectors": Field(float, 0.0, "stain colour jitter: each crop is re-mixed with haematoxylin / eosin / "
                                       "DAB optical-density vectors moved by up to this per component (another "
                                       "laboratory's dyes: bluer or more magenta nuclei); 0 = off", min=0.0, max=1.0),
    "tint": Field(float, 0.0, "background tint: the bright (background) pixels of each crop get a random colour "
                              "cast of up to this per channel (yellow or grey backgrounds of other cameras); 0 = off"),
    "jpeg": Field(int, 0, "JPEG re-compression of half of each batch at a random quality in [jpeg, 95] (other "
                          "labs' exports); 0 = off"),
    "stain_normalize": Field(bool, False, "Reinhard-normalize every crop (train, val, test and at inference) to the "
                                          "training images' mean Lab colour statistics, so that other labs' stains "
                                          "reach the network looking like the training lab's (stored in the "
                                          "checkpoint as stain_reference)"),
    "run_dir": Field(str, "runs/classifier", "checkpoints and logs"),
    "time_budget_min": Field(float, 0.0, "stop after this many minutes (0 = no limit); best checkpoint kept", min=0.0),
    "harmonize": Field(dict, None, "{source: reference}: also train (and select) on a copy of every train / val "
                                   "image of source made to look like reference (classification.harmonize), so that "
                                   "a class only one laboratory provides is learnt by morphology"),
}
