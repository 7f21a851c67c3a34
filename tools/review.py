#!/usr/bin/env python
"""Review a run in the FiftyOne app: build (or rebuild) a dataset from RUN_DIR/fields.jsonl, evaluate against
ground truth, save views, optionally launch the app.

  python tools/review.py out/run1
  python tools/review.py out/eval_bccd_test --gt ../shared/data/bccd/Annotations --gt-format voc --launch
  python tools/review.py out/run1 --launch --port 5151 --address 0.0.0.0   # then browse http://HOST:5151
  python tools/review.py out/run1 --embeddings --launch   # + a t-SNE map of the cells (classifier features)
  python tools/review.py out/run1 --export-labels out/run1_labels   # the reviewed cells -> crops + labels.csv

Review and correct: the app opens on the saved view ``review_leukocytes`` (the classified leukocytes as patches, by
final class; the field view shows only the leukocyte boxes, coloured by class). Select cells and tag their labels
(the tag icon, "Labels"): with a class name (``segmented_neutrophil``, ``lymphocyte``, ...: any shipped taxonomy's
names) to correct a cell, ``confirmed`` to accept its class, ``not_a_cell`` to drop it. ``--export-labels DIR``
writes the tagged cells as crops and DIR/labels.csv (``path,label``), which ``tools/adapt_classifier.py --labels``
learns your laboratory from. Rebuilding a dataset that holds review tags needs ``--rebuild`` (the tags would go).

Offline: tracking is off; the database lives in $FIFTYONE_DATABASE_DIR (default ~/.cache/leukodiff/fiftyone-db).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--gt", help="ground truth: VOC Annotations folder, YOLO labels folder or COCO JSON")
    ap.add_argument("--gt-format", choices=["voc", "yolo", "coco"], default="voc")
    ap.add_argument("--classes", default="WBC,RBC,Platelets", help="YOLO class names in index order")
    ap.add_argument("--name", help="dataset name (default: the run folder's name)")
    ap.add_argument("--launch", action="store_true", help="start the app and wait (Ctrl-C to stop)")
    ap.add_argument("--port", type=int, default=5151)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--embeddings", nargs="?", metavar="WEIGHTS",
                    const=str(ROOT / "classification" / "weights" / "fine13_lite0_192.pt"),
                    help="add an embeddings map of the classified cells (brain key cell_embeddings) from a classifier "
                         "checkpoint's features (default: the shipped fine13 network)")
    ap.add_argument("--embeddings-method", choices=["tsne", "pca"], default="tsne")
    ap.add_argument("--crop-margin", type=float, default=0.75, help="--embeddings / --export-labels: crop margin "
                                                                    "of the run's config")
    ap.add_argument("--export-labels", metavar="OUT_DIR", help="write the reviewed (tagged) cells of the existing "
                                                              "dataset as crops + OUT_DIR/labels.csv; no rebuild")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the dataset even though it holds review tags")
    args = ap.parse_args(argv)

    run = Path(args.run_dir)
    if not (run / "fields.jsonl").exists():
        print(f"error: {run}/fields.jsonl not found (run tools/infer_field.py first)", file=sys.stderr)
        return 2
    from pipelines.review import build_dataset, configure_fiftyone, read_ground_truth

    try:
        gt = read_ground_truth(Path(args.gt), args.gt_format, args.classes.split(",")) if args.gt else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_fiftyone()
    if args.embeddings and not Path(args.embeddings).exists():
        print(f"error: classifier checkpoint not found: {args.embeddings}", file=sys.stderr)
        return 2
    import fiftyone as fo

    from classification.taxonomies import TAXONOMIES
    from pipelines.review import REVIEW_VIEW, export_reviewed, review_tags

    name = args.name or run.resolve().name
    if args.export_labels:
        if name not in fo.list_datasets():
            print(f"error: no dataset '{name}' to export from (build it with tools/review.py {run} first)",
                  file=sys.stderr)
            return 2
        classes = {c for t in TAXONOMIES.values() for c in t}
        counts = export_reviewed(fo.load_dataset(name), Path(args.export_labels), classes, args.crop_margin)
        if not counts:
            print("error: no reviewed cells (tag cell labels with a class name or 'confirmed' in the app first)",
                  file=sys.stderr)
            return 1
        return 0
    if name in fo.list_datasets() and not args.rebuild:
        n = review_tags(fo.load_dataset(name))
        if n:
            print(f"error: dataset '{name}' holds {n} review tag(s) that a rebuild would lose: export them with "
                  f"--export-labels DIR first, or pass --rebuild", file=sys.stderr)
            return 2
    try:
        ds = build_dataset(run, name, gt, crop_margin=args.crop_margin)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.embeddings:
        from pipelines.review import add_cell_embeddings

        add_cell_embeddings(ds, args.embeddings, args.crop_margin, args.embeddings_method)
    if args.launch:
        view = ds.load_saved_view(REVIEW_VIEW) if REVIEW_VIEW in ds.list_saved_views() else ds
        session = fo.launch_app(view, remote=True, port=args.port, address=args.address)
        print(f"app: http://{args.address}:{args.port}", flush=True)
        session.wait(-1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
