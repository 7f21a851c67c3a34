"""The command line of the main job (``tools/infer_field.py``) and ``run_once``, which evaluation tools use to
make or reuse a run: the package holds them so that tools stay thin and no tool imports another."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.config import REPO_ROOT, ConfigError
from core.offline import set_offline
from pipelines.inputs import InputError, expand_inputs
from pipelines.pipeline import Pipeline, load_pipeline_config
from pipelines.ray_engine import ray_engine
from pipelines.results import read_records
from pipelines.run import RunError, RunOptions, run

DOC = """Leukocyte differential of microscope fields: detect, crop, classify, count per smear.

  python tools/infer_field.py FIELDS_DIR --out runs/infer
  python tools/infer_field.py 'captures/**/*.jpg' --manifest smears.csv --out out --device cuda --batch 16
  python tools/infer_field.py cells/ --cells --out out_cells     # pre-cropped cells: detection skipped

INPUT: image files (any extension; content decides), directories (recursive) or globs. The smear id is the
image's parent folder name (as given: a symlink's own folder) unless --manifest (columns path,smear_id) says
otherwise.
Output (see README, "Output contract"): DIR/fields.jsonl (one line per input, written as processed),
DIR/smears/<smear_id>/report.{json,csv,html}, DIR/index.html, DIR/summary.json.
Exit code: 0 all fields processed, 1 some fields failed (their records say why), 2 unusable invocation.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="infer_field.py", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, directories or globs")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--manifest", help="CSV with columns path,smear_id (paths relative to the CSV's folder)")
    ap.add_argument("--config", default=str(REPO_ROOT / "configs" / "pipeline" / "default.yaml"),
                    help="pipeline YAML (default: configs/pipeline/default.yaml)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    ap.add_argument("--batch", type=int, default=8, help="fields per detector batch (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    ap.add_argument("--resume", action="store_true", help="continue a run in --out, skipping recorded fields")
    ap.add_argument("--cells", action="store_true", help="each input is one pre-cropped cell: skip detection")
    ap.add_argument("--save-crops", action="store_true", help="write every cell crop to DIR/crops/<smear>/<label>/")
    ap.add_argument("--save-overlays", action="store_true", help="write fields with boxes to DIR/overlays/<smear>/")
    ap.add_argument("--save-cams", action="store_true", help="Grad-CAM heatmap of every classified cell's final class: "
                                                             "DIR/cams/<smear>/, on hover in the report gallery, as "
                                                             "the 'gradcam' heatmap in tools/review.py (needs the "
                                                             "classifier's .pt beside its .onnx)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local (default): this process; ray: Ray Data actors (pipelines.ray_engine), in-process "
                         "Ray unless --ray-address")
    ap.add_argument("--ray-address", help="--engine ray: address of a running cluster (ray start --head prints it)")
    ap.add_argument("--workers-ray", type=int, default=1, help="--engine ray: actors, each with its own models")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0, help="--engine ray: GPUs per actor (with "
                                                                        "--device cuda)")
    return ap


def infer_main(argv: list[str] | None = None) -> int:
    """The main job, as ``tools/infer_field.py`` runs it (its ``--help`` documents ``argv``); returns the exit code."""
    args = build_parser().parse_args(argv)

    def err(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.batch < 1:
        return err("--batch must be >= 1")
    if not args.inputs and not args.manifest:
        return err("no input: give image files, directories, globs or --manifest")
    try:
        fields, notes = expand_inputs(args.inputs, args.manifest)
    except InputError as e:
        return err(str(e))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not fields:
        return err("the inputs contain no image files")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return err("--device cuda asked but CUDA is not available (use --device cpu)")

    set_offline()
    try:
        cfg = load_pipeline_config(args.config)
        pipe = Pipeline(cfg, device=args.device, half=args.half)
        if not args.cells:
            pipe.detector  # noqa: B018 - load it now: a missing or bad model is one error, not one per field
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return err(str(e))
    if args.save_cams and pipe.stages and pipe.cam_classifier() is None:
        return err("--save-cams needs the first classifier's PyTorch weights (.pt) beside its ONNX export")
    opts = RunOptions(Path(args.out), batch=args.batch, resume=args.resume, cells_mode=args.cells,
                      save_crops=args.save_crops, save_overlays=args.save_overlays, save_cams=args.save_cams,
                      progress=not args.no_progress,
                      workers=args.workers)
    engine = None
    if args.engine == "ray":
        if args.workers_ray < 1:
            return err("--workers-ray must be >= 1")
        try:
            import ray.data  # noqa: F401
        except ImportError as e:
            return err(f"--engine ray needs Ray Data (pip install 'ray[data]'): {e}")
        engine = ray_engine(args.config, opts, device=args.device, half=args.half, address=args.ray_address,
                            workers=args.workers_ray, gpus_per_worker=args.gpus_per_worker)
    try:
        summary = run(fields, pipe, opts, engine=engine)
    except RunError as e:
        return err(str(e))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the fields done so far are in {Path(args.out) / 'fields.jsonl'}; run the same command "
              "with --resume to finish", file=sys.stderr)
        return 130
    this = summary["this_run"]
    print(json.dumps({k: summary[k] for k in ("fields_total", "fields_ok", "fields_failed", "cells", "smears")}
                     | {"wall_s": this["wall_s"], "fields_per_s": this["fields_per_s"]}))
    print(f"reports: {Path(args.out) / 'index.html'}")
    return 1 if summary["fields_failed"] else 0


def run_once(out: Path, argv: list[str]) -> int:
    """Run the pipeline (``argv`` without ``--out``) into ``out`` unless ``out/fields.jsonl`` exists, so evaluation
    tools reuse a finished run. Returns 0 when the run exists or completed with every field processed; 1 (with a
    message) when fields failed, since a metric over a run with failed fields would count them as missed; else the
    run's exit code."""
    jsonl = Path(out) / "fields.jsonl"
    if not jsonl.exists():
        rc = infer_main(argv + ["--out", str(out), "--no-progress"])
        if rc not in (0, 1):
            return rc
    else:  # said, so that figures of an older model or config are never taken for new ones
        print(f"note: reusing the finished run in {out} (delete it, or give another folder, to run the pipeline "
              "again)", file=sys.stderr)
    failed, total, first = 0, 0, None
    for rec in read_records(jsonl):
        total += 1
        if rec.get("error"):
            failed += 1
            first = first or f"{rec['path']}: {rec['error']}"
    if failed:
        print(f"error: {failed} of {total} fields failed in {out} (first: {first}); fix them, or delete the run folder "
              "after fixing the configuration, before evaluating", file=sys.stderr)
        return 1
    return 0
