#!/usr/bin/env python
"""Benchmarks: detection AP (pycocotools), classification accuracy, and per-stage latency against a naive baseline.

  python tools/benchmark.py detection --dataset bccd --split test --out out/bench
  python tools/benchmark.py classification --task pbc8 --split test --out out/bench
  python tools/benchmark.py latency --dataset bccd --split test --batches 1 8 32 --device cpu --out out/bench
  python tools/benchmark.py latency --fields out/bench_fields_jpg --config configs/pipeline/gpu.yaml --device cuda \
      --half
  python tools/benchmark.py latency --dataset bccd --split test --batches 8 --engine ray   # + Ray, 1 and 2 actors

latency: the real orchestrator (tools/infer_field.py's code path: decode overlapped with inference, batched
detector, batched classifiers) over the fields at each batch size, after a warm-up pass; per-stage p50/p95 from
the per-field timings (decode, detect, crop, classify; aggregate = report writing per field) and fields/s of the
whole loop, the median of --repeat passes. The same fields go through a naive baseline: Ultralytics `predict` one
image at a time on the torch weights (with the pipeline's auto_scale rule: small-cell fields predicted again
larger) and each classifier one crop at a time. Passes are interleaved (each round: one
pass per batch size, then one baseline pass), so that both see the same machine; the speed-up is the median over
rounds of the best batch size's fields/s over the baseline's in that round. On CUDA, stages are synchronised;
--half runs fp16. Writes latency.json and latency.md in --out.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from core.offline import set_offline

    set_offline()
    from pipelines.pipeline import Pipeline, load_pipeline_config
    from pipelines.results import read_records
    from pipelines.run import RunOptions, run

    paths = _fields(args)[: args.limit or None]
    if not paths:
        print("error: no fields", file=sys.stderr)
        return 2
    from core.config import ConfigError

    try:
        cfg = load_pipeline_config(args.config)
        pipe = Pipeline(cfg, device=args.device, half=args.half, log=lambda m: None)
        pipe.detector  # noqa: B018 - a missing model or runtime is one clear error
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fields = [FieldInput(p.resolve(), "bench", f"bench/{i:05d}") for i, p in enumerate(paths)]
    out = {"device": args.device, "half": args.half, "fields": len(fields), "config": args.config,
           "torch_threads": torch.get_num_threads(), "repeat": args.repeat, "workers": args.workers, "cpu": _cpu_name(),
           "onnx_runtime": cfg["onnx_runtime"],
           "gpu": _gpu_name(args.device),
           "pipeline": {}, "baseline": None}
    tmp = Path(tempfile.mkdtemp(prefix="leukodiff_bench_"))
    try:
        run(fields[: max(args.batches)], pipe, RunOptions(tmp / "warm", batch=max(args.batches), progress=False,
                                                          workers=args.workers))
        from pipelines.report import write_reports

        base_pass = None if args.no_baseline else baseline(cfg, paths, args)
        got = {b: {"rates": [], "recs": [], "aggs": [], "cells": 0} for b in args.batches}
        base_rates, base_ms = [], []
        for r in range(args.repeat):
            for b in args.batches:
                d = tmp / f"b{b}_{r}"
                s = run(fields, pipe, RunOptions(d, batch=b, progress=False, workers=args.workers))
                g = got[b]
                g["rates"].append(s["this_run"]["fields_per_s"])
                g["cells"] = s["cells"]
                these = list(read_records(d))
                g["recs"] += these
                t0 = time.perf_counter()
                write_reports(d, cfg)
                g["aggs"].append((time.perf_counter() - t0) * 1000 / len(these))
                shutil.rmtree(d, ignore_errors=True)
            line = ", ".join(f"batch {b} {got[b]['rates'][-1]}" for b in args.batches)
            if base_pass:
                rate, per = base_pass()
                base_rates.append(rate)
                base_ms += per
                line += f", baseline {rate}"
            print(f"round {r + 1}/{args.repeat} fields/s: {line}", flush=True)
        for b, g in got.items():
            stages = {k: [x["timings_ms"].get(k, 0.0) for x in g["recs"] if not x["error"]]
                      for k in ("decode", "detect", "crop", "classify")}
            out["pipeline"][str(b)] = {
                **{k: {"p50": _pct(v, 50), "p95": _pct(v, 95)} for k, v in stages.items()},
                "aggregate": {"p50": round(float(np.median(g["aggs"])), 3), "p95": None},
                "fields_per_s": round(float(np.median(g["rates"])), 3), "fields_per_s_runs": g["rates"],
                "cells": g["cells"]}
        if base_pass:
            out["baseline"] = {"fields_per_s": round(float(np.median(base_rates)), 3), "fields_per_s_runs": base_rates,
                               "per_field_ms": {"p50": _pct(base_ms, 50), "p95": _pct(base_ms, 95)}}
            best = max(args.batches, key=lambda b: out["pipeline"][str(b)]["fields_per_s"])
            ratios = [a / b for a, b in zip(got[best]["rates"], base_rates)]
            out["best_batch"] = best
            out["speedup_runs"] = [round(x, 2) for x in ratios]
            out["speedup"] = round(float(np.median(ratios)), 2)
        if args.engine == "ray":
            out["ray"] = ray_latency(fields, pipe, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "latency.json").write_text(json.dumps(out, indent=1))
    md = latency_markdown(out)
    (Path(args.out) / "latency.md").write_text(md)
    print(md)
    return 0


def ray_latency(fields, pipe, args, tmp: Path) -> dict:
    """fields/s of ``--engine ray`` with 1 and 2 actors (in-process Ray, or --ray-address), each pass a whole job as
    a user runs it: the actor pool starts, loads its models, and streams the fields back; --repeat passes, median."""
    from pipelines.ray_engine import ray_engine
    from pipelines.run import RunOptions, run

    batch = max(args.batches)
    res = {}
    for workers in args.ray_workers:
        rates = []
        for r in range(args.repeat):
            opts = RunOptions(tmp / f"ray{workers}_{r}", batch=batch, progress=False, workers=args.workers)
            eng = ray_engine(args.config, opts, device=args.device, half=args.half, address=args.ray_address,
                             workers=workers, log=lambda m: None)
            s = run(fields, pipe, opts, log=lambda m: None, engine=eng)
            rates.append(s["this_run"]["fields_per_s"])
            shutil.rmtree(tmp / f"ray{workers}_{r}", ignore_errors=True)
            print(f"ray {workers} worker(s), pass {r + 1}: {rates[-1]} fields/s", flush=True)
        res[str(workers)] = {"fields_per_s": round(float(np.median(rates)), 3), "fields_per_s_runs": rates,
                             "batch": batch}
    return res


def baseline(cfg: dict, paths: list[Path], args):
    """Naive: Ultralytics predict per image (torch weights: the pipeline's, or --baseline-detector's when it runs an
    export; when the pipeline's detector has ``auto_scale``, the same ``AutoScaleDetector`` passes around predict),
    each classifier per crop (torch checkpoint, the .pt beside an .onnx export). Loads and warms it up; returns a
    function that runs one pass over ``paths`` and returns (fields/s, ms per field)."""
    import torch

    from classification.classifier import Classifier
    from detection.yolo import ultralytics_offline
    from core.config import resolve_path
    from pipelines.crop import crop_square
    from core.io import read_image

    ultralytics_offline()
    from ultralytics import YOLO

    dcfg = cfg["detector_cfg"]
    if dcfg["backend"] != "yolo":  # an export: the baseline runs the torch weights it came from
        from detection import check_detector_config
        from core.config import load_yaml

        dcfg = check_detector_config(load_yaml(args.baseline_detector), args.baseline_detector)
    weights = resolve_path(dcfg["weights"])
    model = YOLO(str(weights))
    clfs = [Classifier(w, device=args.device) for w in (resolve_path(st["cfg"]["weights"]).with_suffix(".pt")
                                                          for st in cfg["classifiers"]) if w.exists()]

    from detection import AutoScaleDetector, Detections

    class Predict:  # Ultralytics predict, one image at a time, behind the Detector contract
        name, classes = "ultralytics-predict", list(dcfg["classes"])

        def detect(self, images, imgsz=None):
            out = []
            for img in images:
                r = model.predict(img[..., ::-1], imgsz=imgsz or dcfg["imgsz"], conf=dcfg["conf"], iou=dcfg["iou"],
                                  verbose=False, device=args.device, half=args.half)[0]
                out.append(Detections(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(),
                                      tuple(r.names[int(c)] for c in r.boxes.cls.cpu().numpy())))
            return out

    # the pipeline's detector has auto_scale: the baseline does the same passes (same rule, same probe)
    detector = (AutoScaleDetector(Predict(), {**cfg["detector_cfg"], "imgsz": dcfg["imgsz"]})
                if cfg["detector_cfg"]["auto_scale"] else Predict())

    def one(p):
        img = read_image(p)
        det = detector.detect([img])[0]
        for box, label in zip(det.xyxy, det.labels):
            if label in cfg["classify_labels"]:
                crop = crop_square(img, box, cfg["crop_margin"])
                for clf in clfs:
                    clf.classify([crop])

    for p in paths[:3]:
        one(p)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()

    def one_pass() -> tuple[float, list[float]]:
        per = []
        t0 = time.perf_counter()
        for p in paths:
            t1 = time.perf_counter()
            one(p)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            per.append((time.perf_counter() - t1) * 1000)
        return round(len(paths) / (time.perf_counter() - t0), 3), per

    return one_pass


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
                f"Speed-up of the best pipeline batch ({o['best_batch']}): {o['speedup']}x (median over rounds; "
                f"per round {o['speedup_runs']}).\n")
    if o.get("ray"):
        tail += ("\nRay Data engine (each pass a whole job: actor pool start, model loading, fields streamed back): "
                 + ", ".join(f"{w} worker(s) {v['fields_per_s']} fields/s (batch {v['batch']})"
                             for w, v in o["ray"].items()) + ".\n")
    return (f"Latency in ms per field (fields/s: median of {o.get('repeat', 1)} passes), {o['fields']} fields, "
            f"device {o['device']} ({o['gpu'] or o['cpu']}, "
            f"{o['torch_threads']} torch threads){' fp16' if o['half'] else ''}, config {o['config']} "
            f"(onnx_runtime {o['onnx_runtime']})\n\n"
            + hdr + rows + tail)


# CPU features that change what OpenVINO / ONNX Runtime run (int8 dot products, bfloat16): named in the table
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def _cpu_name() -> str:
    """``model name xN [flags]`` from /proc/cpuinfo's first processor: "AMD EPYC" alone does not say whether bf16
    is there."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n", 1)[0]  # one block per logical CPU; the first describes them all
        info = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if info.get("model name"):
            have = [f for f in SPEED_FLAGS if f in info.get("flags", "").split()]
            return f"{info['model name']} x{os.cpu_count()}" + (f" [{' '.join(have)}]" if have else "")
    except OSError:
        pass
    import platform

    return platform.processor()


def _gpu_name(device: str):
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(0)


def _tool(name: str, argv: list[str]) -> int:
    """Run another tool as its own command (tools do not import each other)."""
    import subprocess

    return subprocess.call([sys.executable, str(ROOT / "tools" / name), *argv])


def detection(args) -> int:
    return _tool("eval_detector.py", ["--dataset", args.dataset, "--split", args.split, "--run",
                                      str(Path(args.out) / f"det_{args.dataset}_{args.split}"), "--config",
                                      args.config, "--device", args.device])


def classification(args) -> int:
    return _tool("eval_classifier.py", ["--task", args.task, "--split", args.split, "--run",
                                        str(Path(args.out) / f"cls_{args.task}_{args.split}"), "--config",
                                        args.config, "--device", args.device])


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
    ap.add_argument("--repeat", type=int, default=5, help="latency: passes per batch size and for the baseline; "
                                                          "fields/s is their median (default 5)")
    ap.add_argument("--workers", type=int, default=2, help="latency: decoding threads, as infer_field.py --workers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="fp16 (CUDA)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--baseline-detector", default=str(ROOT / "configs" / "detector" / "yolov8n_320.yaml"),
                    help="latency: torch YOLO config of the naive baseline when the pipeline runs an ONNX export")
    ap.add_argument("--engine", choices=["local", "ray"], default="local", help="latency: ray also times the Ray "
                                                                              "Data engine (--ray-workers)")
    ap.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2], help="latency --engine ray: actor counts")
    ap.add_argument("--ray-address", help="latency --engine ray: a running cluster instead of in-process Ray")
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args(argv)
    return {"detection": detection, "classification": classification, "latency": latency}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
