"""End to end through tools/infer_field.py with tiny models: output contract, bad inputs, resume, cells mode,
manifest, offline."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pipelines.cli import infer_main

FIELD_KEYS = {"field_id", "path", "smear_id", "width", "height", "cells", "timings_ms", "error", "versions",
              "rescaled_imgsz", "warnings"}
CELL_KEYS = {"box", "det_label", "det_score", "label", "score", "classes", "ood"}


def _lines(out: Path) -> list[dict]:
    raw = (out / "fields.jsonl").read_text()
    assert raw == "" or raw.endswith("\n"), "half-written last line"
    return [json.loads(x) for x in raw.splitlines()]


def _run(tiny_models, *args):
    return infer_main([*map(str, args), "--config", str(tiny_models["pipeline"]), "--no-progress"])


def test_output_contract(tiny_models, synthetic_dir, tmp_path):
    out = tmp_path / "out"
    assert _run(tiny_models, synthetic_dir, "--out", out, "--batch", "4", "--save-crops", "--save-overlays") == 0
    recs = _lines(out)
    assert len(recs) == 6
    assert {r["smear_id"] for r in recs} == {"smear_01", "smear_02"}
    for r in recs:
        assert set(r) == FIELD_KEYS
        assert r["error"] is None and (r["width"], r["height"]) == (732, 574)
        assert set(r["timings_ms"]) == {"decode", "detect", "crop", "classify"}
        assert "detector" in r["versions"] and "pbc8" in r["versions"]
        for c in r["cells"]:
            assert set(c) == CELL_KEYS
            x1, y1, x2, y2 = c["box"]
            assert 0 <= x1 <= x2 <= 732 and 0 <= y1 <= y2 <= 574
            assert c["det_label"] in {"WBC", "RBC", "Platelets"}
            assert {"pbc8", "wang11"} <= set(c["classes"])
            for task, v in c["classes"].items():
                assert set(v) == {"label", "score", "probs"}
                assert v["label"] == max(v["probs"], key=v["probs"].get)
                assert abs(sum(v["probs"].values()) - 1) < 1e-2
    assert sum(len(r["cells"]) for r in recs) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fields_total"] == 6 and summary["fields_failed"] == 0 and summary["smears"] == 2
    for s in ("smear_01", "smear_02"):
        rep = json.loads((out / "smears" / s / "report.json").read_text())
        assert rep["fields_used"] == 3
        assert (out / "smears" / s / "report.html").read_text().startswith("<!doctype html>")
        assert (out / "smears" / s / "report.csv").exists()
    assert (out / "index.html").exists()
    assert list((out / "overlays").rglob("*.jpg")) and list((out / "crops").rglob("*.jpg"))


def _bad_inputs(d: Path) -> dict[str, bool]:
    """Write one file of each awkward kind; returns name -> whether it should be processed without error."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(d / "good.jpg")
    Image.fromarray(rgb[..., 0], "L").save(d / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "RGBA").save(d / "rgba.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "sixteen.png")
    Image.fromarray(rgb).save(d / "png_named.jpg", format="PNG")
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    Image.fromarray(rgb).save(d / "full.jpg", quality=95)
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "full.jpg").unlink()
    return {"good": True, "gray": True, "rgba": True, "sixteen": True, "png_named": True, "zero": False,
            "text": False, "truncated": False}


def test_bad_inputs_never_stop_the_run(tiny_models, tmp_path):
    expected = _bad_inputs(tmp_path / "smearX")
    out = tmp_path / "out"
    rc = _run(tiny_models, tmp_path / "smearX", tmp_path / "does_not_exist.jpg", "--out", out, "--batch", "3")
    assert rc == 1  # some fields failed
    recs = {Path(r["path"]).stem: r for r in _lines(out)}
    assert set(recs) == set(expected) | {"does_not_exist"}
    for name, ok in expected.items():
        assert (recs[name]["error"] is None) == ok, (name, recs[name]["error"])
        if ok:
            assert recs[name]["width"] == 160 and recs[name]["height"] == 120
    assert "cannot access" in recs["does_not_exist"]["error"]
    assert "truncated" in recs["truncated"]["error"]
    rep = json.loads((out / "smears" / "smearX" / "report.json").read_text())
    assert rep["fields_failed"] == 3 and any(f["flag"] == "fields_failed" for f in rep["flags"])


def test_empty_inputs_are_a_clear_error(tiny_models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _run(tiny_models, tmp_path / "empty", "--out", tmp_path / "o") == 2
    assert "no image files" in capsys.readouterr().err
    assert infer_main(["--out", str(tmp_path / "o")]) == 2
    assert _run(tiny_models, str(tmp_path / "nothing_*.png"), "--out", tmp_path / "o") == 2


def test_missing_detector_is_one_clear_error(tiny_models, synthetic_dir, tmp_path, capsys):
    from conftest import write_yaml

    det = write_yaml(tmp_path / "det.yaml", {"backend": "onnx", "model": str(tmp_path / "gone.onnx"), "imgsz": 64})
    pipe = write_yaml(tmp_path / "pipe.yaml", {"detector": str(det), "classifiers": []})
    out = tmp_path / "out"
    assert infer_main([str(synthetic_dir), "--out", str(out), "--config", str(pipe), "--no-progress"]) == 2
    assert "gone.onnx" in capsys.readouterr().err and not (out / "fields.jsonl").exists()


def test_evaluation_refuses_a_run_with_failed_fields(tiny_models, synthetic_dir, tmp_path, capsys):
    from pipelines.cli import run_once

    out = tmp_path / "out"
    assert run_once(out, [str(synthetic_dir / "smear_01"), "--config", str(tiny_models["pipeline"])]) == 0
    assert run_once(out, []) == 0  # an existing complete run is reused
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out2 = tmp_path / "out2"
    assert run_once(out2, [str(bad), str(synthetic_dir / "smear_01"), "--config", str(tiny_models["pipeline"])]) == 1
    assert "1 of 4 fields failed" in capsys.readouterr().err


def test_existing_output_needs_resume(tiny_models, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(tiny_models, synthetic_dir / "smear_01", "--out", out) == 0
    before = (out / "fields.jsonl").read_bytes()
    assert _run(tiny_models, synthetic_dir / "smear_01", "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "fields.jsonl").read_bytes() == before


def test_resume_after_truncation_at_any_byte(tiny_models, synthetic_dir, tmp_path):
    """Simulate kills at many points: cut fields.jsonl mid-line and at line ends, then --resume."""
    full = tmp_path / "full"
    assert _run(tiny_models, synthetic_dir, "--out", full) == 0
    data = (full / "fields.jsonl").read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    cuts = sorted({0, 7, ends[0], ends[0] + 25, ends[2] - 1, ends[3], len(data) - 3})
    for cut in cuts:
        out = tmp_path / f"cut{cut}"
        out.mkdir()
        (out / "fields.jsonl").write_bytes(data[:cut])
        assert _run(tiny_models, synthetic_dir, "--out", out, "--resume") == 0
        recs = _lines(out)
        assert sorted(r["field_id"] for r in recs) == sorted(json.loads(x)["field_id"] for x in data.splitlines())


@pytest.mark.slow
def test_resume_after_real_kill(tiny_models, tmp_path):
    """SIGKILL a real run part-way, resume, and find every field exactly once."""
    from pipelines.synthetic import write_demo_fields

    fields = tmp_path / "fields"
    write_demo_fields(fields, n_smears=1, fields_per_smear=24, seed=3)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "infer_field.py"), str(fields), "--out", str(out), "--batch", "2",
           "--config", str(tiny_models["pipeline"]), "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        f = out / "fields.jsonl"
        if f.exists() and f.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = (out / "fields.jsonl").read_bytes().count(b"\n")
    assert 0 < n_before < 24
    assert subprocess.run(cmd + ["--resume"], capture_output=True).returncode == 0
    recs = _lines(out)
    assert len(recs) == 24 and len({r["path"] for r in recs}) == 24


def test_cells_mode(tiny_models, tmp_path):
    d = tmp_path / "patientA"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (100 + i, 90, 3), dtype=np.uint8)).save(d / f"cell{i}.jpg")
    out = tmp_path / "out"
    assert _run(tiny_models, d, "--cells", "--out", out) == 0
    recs = _lines(out)
    assert len(recs) == 5
    for r in recs:
        assert len(r["cells"]) == 1
        c = r["cells"][0]
        assert c["det_label"] == "WBC" and c["box"] == [0.0, 0.0, 90.0, float(r["height"])]
        assert {"pbc8", "wang11"} <= set(c["classes"])
        assert "detector" not in r["versions"]


def test_manifest_sets_smear_ids(tiny_models, synthetic_dir, tmp_path):
    m = tmp_path / "m.csv"
    rows = ["path,smear_id"] + [f"{p},patient_{i % 2}" for i, p in enumerate(sorted(synthetic_dir.rglob("*.png")))]
    m.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert _run(tiny_models, "--manifest", m, "--out", out) == 0
    assert {r["smear_id"] for r in _lines(out)} == {"patient_0", "patient_1"}


NET_GUARD = r"""
import json, socket, sys
attempts = []
def deny(name):
    def f(*a, **k):
        attempts.append([name, repr(a)[:200]])
        raise OSError("network disabled in test")
    return f
socket.socket.connect = deny("connect")
socket.socket.connect_ex = deny("connect_ex")
socket.create_connection = deny("create_connection")
socket.getaddrinfo = deny("getaddrinfo")
socket.gethostbyname = deny("gethostbyname")
sys.argv = ["infer_field.py"] + sys.argv[2:]
out = sys.argv[sys.argv.index("--out") + 1]
import runpy
try:
    runpy.run_path({tool!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
json.dump({{"attempts": attempts, "code": code}}, open(out + "_net.json", "w"))
"""


def test_full_run_makes_no_network_connection(tiny_models, synthetic_dir, tmp_path):
    fields = tmp_path / "fields"
    shutil.copytree(synthetic_dir, fields)
    (fields / "smear_01" / "notes.jpg").write_text("not an image")  # the path where Ultralytics would pip-install
    script = tmp_path / "guard.py"
    script.write_text(NET_GUARD.format(tool=str(ROOT / "tools" / "infer_field.py")))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "FIFTYONE_DO_NOT_TRACK")}
    r = subprocess.run([sys.executable, str(script), "x", str(fields), "--out", str(out), "--config",
                        str(tiny_models["pipeline"]), "--no-progress"], capture_output=True, text=True, env=env)
    res = json.loads(Path(str(out) + "_net.json").read_text())
    assert res["code"] == 1, r.stderr[-2000:]  # the text file is a failed field
    assert res["attempts"] == [], res["attempts"]
    recs = _lines(out)
    assert len(recs) == 7
    assert [r["error"] for r in recs if r["error"]] == ["not an image file (unrecognized format)"]


RSS_WRAPPER = r"""
import json, resource, runpy, sys
sys.argv = ["infer_field.py"] + sys.argv[1:]
try:
    runpy.run_path({tool!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)
"""


@pytest.mark.slow
def test_memory_stays_flat_over_many_fields(tiny_models, synthetic_dir, tmp_path):
    """Peak RSS of a 600-field run is within a few MB of a 60-field run: results are streamed, not collected."""
    src = sorted(synthetic_dir.rglob("*.png"))
    wrapper = tmp_path / "rss.py"
    wrapper.write_text(RSS_WRAPPER.format(tool=str(ROOT / "tools" / "infer_field.py")))
    peaks = {}
    for n in (60, 600):
        d = tmp_path / f"in{n}" / "smear"
        d.mkdir(parents=True)
        for i in range(n):
            os.link(src[i % len(src)], d / f"f{i:04d}.png")
        out = tmp_path / f"out{n}"
        r = subprocess.run([sys.executable, str(wrapper), str(d), "--out", str(out), "--batch", "8", "--config",
                            str(tiny_models["pipeline"]), "--no-progress"], capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("RSS")][-1].split()
        assert line[2] == "0", r.stderr[-2000:]
        peaks[n] = int(line[1]) / 1024  # MiB
        assert len(_lines(out)) == n
    assert peaks[600] - peaks[60] < 40, peaks
