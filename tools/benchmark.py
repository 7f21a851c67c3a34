#!/usr/bin/env python
"""Benchmarks: detection AP (pycocotools), classification accuracy, and per-stage latency against a naive baseline.

  python tools/benchmark.py detection --dataset bccd --split test --out out/bench
  python tools/benchmark.py classification --task pbc8 --split test --out out/bench
  python tools/benchmark.py latency --dataset bccd --split test --batches 1 8 32 --device cpu --out out/bench

latency: the real orchestrator (tools/infer_field.py's code path: decode overlapped with inference, batched
detector, batched classifiers) over the fields at each batch size, after a warm-up pass; per-stage p50/p95 from
the per-field timings (decode, detect, crop, classify; aggregate = report writing per field) and fields/s of the
whole loop. Then the same fields through a naive baseline: Ultralytics `predict` one image at a time on the torch
weights and each classifier one crop at a time; the ratio is pipeline fields/s over baseline fields/s. On CUDA,
stages are synchronised; --half runs fp16. Writes latency.json and latency.md in --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _fields(args) -> list[Path]:
    if args.fields:
        from pipelines.inputs import expand_inputs

        return [f.path for f in expand_inputs(args.fields)[0]]
    from detection.data import load_card, read_split

    return [r.path for r in read_split(load_card(args.dataset), args.split)]


def _pct(v, q):
    return round(float(np.percentile(v, q)), 2) if len(v) else None


def latency(args) -> int:
    import torch

    from pipelines.inputs import FieldInput
    from pipelines.offline import set_offline

    set_offline()
    from pipelines.pipeline import Pipeline, load_pipeline_config
    from pipelines.run import RunOptions, run

    paths = _fields(args)[: args.limit or None]
    if not paths:
        print("error: no fields", file=sys.stderr)
        return 2
    cfg = load_pipeline_config(args.config)
    pipe = Pipeline(cfg, device=args.device, half=args.half, log=lambda m: None)
    fields = [FieldInput(p.resolve(), "bench", f"bench/{i:05d}") for i, p in enumerate(paths)]
    out = {"device": args.device, "half": args.half, "fields": len(fields), "config": args.config,
           "torch_threads": torch.get_num_threads(), "cpu": _cpu_name(), "gpu": _gpu_name(args.device),
           "pipeline": {}, "baseline": None}
    tmp = Path(tempfile.mkdtemp(prefix="leukodiff_bench_"))
    try:
        run(fields[: max(args.batches)], pipe, RunOptions(tmp / "warm", batch=max(args.batches), progress=False))
        for b in args.batches:
            d = tmp / f"b{b}"
            s = run(fields, pipe, RunOptions(d, batch=b, progress=False))
            recs = [json.loads(x) for x in (d / "fields.jsonl").read_text().splitlines()]
            t0 = time.perf_counter()
            from pipelines.report import write_reports

            write_reports(d, cfg)
            agg = (time.perf_counter() - t0) * 1000 / len(recs)
            stages = {k: [r["timings_ms"].get(k, 0.0) for r in recs if not r["error"]]
                      for k in ("decode", "detect", "crop", "classify")}
            out["pipeline"][str(b)] = {
                **{k: {"p50": _pct(v, 50), "p95": _pct(v, 95)} for k, v in stages.items()},
                "aggregate": {"p50": round(agg, 3), "p95": None},
                "fields_per_s": s["this_run"]["fields_per_s"], "cells": s["cells"]}
            print(f"batch {b}: {s['this_run']['fields_per_s']} fields/s", flush=True)
        if not args.no_baseline:
            out["baseline"] = baseline(cfg, paths, args)
            best = max(v["fields_per_s"] for v in out["pipeline"].values())
            out["speedup"] = round(best / out["baseline"]["fields_per_s"], 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "latency.json").write_text(json.dumps(out, indent=1))
    md = latency_markdown(out)
    (Path(args.out) / "latency.md").write_text(md)
    print(md)
    return 0


def baseline(cfg: dict, paths: list[Path], args) -> dict:
    """Naive: Ultralytics predict per image (torch weights), each classifier per crop."""
    import torch

    from classification.classifier import Classifier
    from detection.yolo import ultralytics_offline
    from pipelines.config import resolve_path
    from pipelines.crop import crop_square
    from pipelines.io import read_image

    ultralytics_offline()
    from ultralytics import YOLO

    dcfg = cfg["detector_cfg"]
    weights = resolve_path(dcfg["weights"]) if dcfg["backend"] == "yolo" else \
        resolve_path(str(dcfg["weights"] or dcfg["model"])).with_suffix(".pt")
    model = YOLO(str(weights))
    clfs = [Classifier(resolve_path(st["cfg"]["weights"]), device=args.device) for st in cfg["classifiers"]
            if resolve_path(st["cfg"]["weights"]).exists()]

    def one(p):
        img = read_image(p)
        r = model.predict(img[..., ::-1], imgsz=dcfg["imgsz"], conf=dcfg["conf"], iou=dcfg["iou"], verbose=False,
                          device=args.device, half=args.half)[0]
        names = r.names
        for box, c in zip(r.boxes.xyxy.cpu().numpy(), r.boxes.cls.cpu().numpy()):
            if names[int(c)] in cfg["classify_labels"]:
                crop = crop_square(img, box, cfg["crop_margin"])
                for clf in clfs:
                    clf.classify([crop])

    for p in paths[:3]:
        one(p)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    per = []
    for p in paths:
        t1 = time.perf_counter()
        one(p)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        per.append((time.perf_counter() - t1) * 1000)
    wall = time.perf_counter() - t0
    print(f"baseline: {len(paths) / wall:.2f} fields/s", flush=True)
    return {"fields_per_s": round(len(paths) / wall, 3), "per_field_ms": {"p50": _pct(per, 50), "p95": _pct(per, 95)}}


def latency_markdown(o: dict) -> str:
    hdr = ("| batch | decode p50/p95 | detect p50/p95 | crop p50/p95 | classify p50/p95 | aggregate | fields/s |\n"
           "|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {b} | " + " | ".join(f"{v[k]['p50']} / {v[k]['p95']}" for k in ("decode", "detect", "crop", "classify"))
        + f" | {v['aggregate']['p50']} | {v['fields_per_s']} |\n" for b, v in o["pipeline"].items())
    tail = ""
    if o.get("baseline"):
        tail = (f"\nNaive baseline (Ultralytics predict per image + classifiers per crop): "
                f"{o['baseline']['fields_per_s']} fields/s (p50 {o['baseline']['per_field_ms']['p50']} ms/field). "
                f"Speed-up of the best pipeline batch: {o['speedup']}x.\n")
    return (f"Latency in ms per field, {o['fields']} fields, device {o['device']} ({o['gpu'] or o['cpu']}, "
            f"{o['torch_threads']} torch threads){' fp16' if o['half'] else ''}, config {o['config']}\n\n"
            + hdr + rows + tail)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                import os

                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    import platform

    return platform.processor()


def _gpu_name(device: str):
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(0)


def detection(args) -> int:
    from tools.eval_detector import main as ev

    return ev(["--dataset", args.dataset, "--split", args.split, "--run", str(Path(args.out) / f"det_{args.dataset}_"
               f"{args.split}"), "--config", args.config, "--device", args.device])


def classification(args) -> int:
    from tools.eval_classifier import main as ev

    return ev(["--task", args.task, "--split", args.split, "--run", str(Path(args.out) / f"cls_{args.task}_"
               f"{args.split}"), "--config", args.config, "--device", args.device])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["detection", "classification", "latency"])
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"))
    ap.add_argument("--dataset", default="bccd", help="dataset card for detection / latency fields")
    ap.add_argument("--split", default="test")
    ap.add_argument("--fields", nargs="*", help="latency: image files / folders instead of a dataset split")
    ap.add_argument("--task", default="pbc8", help="classification task")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--limit", type=int, default=0, help="latency: at most N fields")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="fp16 (CUDA)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args(argv)
    return {"detection": detection, "classification": classification, "latency": latency}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
