"""--engine ray: the same records as the local engine (timings and order aside), the same error records, and a
killed Ray run resumed to every field exactly once. One local Ray instance for the module (in-process, started by
the first run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytest.importorskip("ray.data")


def _records(run):
    out = {}
    for line in (run / "fields.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("timings_ms")
        out[r["field_id"]] = r
    return out


@pytest.fixture(scope="module")
def fields(synthetic_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("ray_fields")
    shutil.copytree(synthetic_dir, d / "in")
    (d / "in" / "smear_01" / "broken.png").write_bytes(b"\x89PNG broken")
    (d / "in" / "smear_02" / "empty.jpg").write_bytes(b"")
    return d / "in"


def test_ray_engine_gives_the_local_records(tiny_models, fields, tmp_path):
    from pipelines.cli import infer_main

    base = [str(fields), "--config", str(tiny_models["pipeline"]), "--no-progress", "--batch", "2"]
    assert infer_main(base + ["--out", str(tmp_path / "local")]) == 1  # two bad files
    assert infer_main(base + ["--out", str(tmp_path / "ray"), "--engine", "ray", "--workers-ray", "2"]) == 1
    a, b = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len(a) == 8
    for k in a:
        assert a[k] == b[k], k  # boxes, labels, scores, errors: equal
    assert sum(r["error"] is not None for r in b.values()) == 2
    s = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert s["engine"].startswith("ray (in-process, 2 worker") and s["fields_failed"] == 2
    def gallery(run):  # which crops fill a class's capped gallery depends on the order results arrive in
        return sorted((p.parent.name, len(list(p.glob("*.jpg")))) for p in (run / "smears").glob("*/gallery/*"))

    assert gallery(tmp_path / "ray") == gallery(tmp_path / "local")
    rep_a = json.loads((tmp_path / "local" / "smears" / "smear_01" / "report.json").read_text())
    rep_b = json.loads((tmp_path / "ray" / "smears" / "smear_01" / "report.json").read_text())
    assert rep_a == rep_b


def test_killed_ray_run_resumes_to_every_field_once(tiny_models, synthetic_dir, tmp_path):
    """A Ray run killed (SIGKILL of its process group) after its first records, then --resume with Ray."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        for f in sorted(synthetic_dir.rglob("*.png"))[:1]:
            shutil.copy(f, src / f"f{i:02d}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tools" / "infer_field.py"), str(src), "--out", str(out), "--config",
           str(tiny_models["pipeline"]), "--engine", "ray", "--batch", "1", "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    jsonl, deadline = out / "fields.jsonl", time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if jsonl.exists() and jsonl.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = jsonl.read_text().count("\n") if jsonl.exists() else 0
    with open(jsonl, "a") as f:
        f.write('{"field_id": "half-writ')  # as a kill during a write leaves it
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ids = [json.loads(x)["field_id"] for x in jsonl.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 12 and before < 12


@pytest.mark.slow
@pytest.mark.realdata
def test_ray_engine_with_the_shipped_models_on_real_fields(data_root, tmp_path):
    from pipelines.cli import infer_main

    inputs = [str(data_root / "bccd" / "JPEGImages" / f"BloodImage_0000{i}.jpg") for i in range(4)]
    assert infer_main(inputs + ["--out", str(tmp_path / "local"), "--no-progress"]) == 0
    assert infer_main(inputs + ["--out", str(tmp_path / "ray"), "--engine", "ray", "--no-progress"]) == 0
    a, b = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert a.keys() == b.keys()
    for k in a:
        ca, cb = a[k]["cells"], b[k]["cells"]
        assert [c["label"] for c in ca] == [c["label"] for c in cb]
        for x, y in zip(ca, cb):
            assert x["box"] == pytest.approx(y["box"], abs=0.1) and x["score"] == pytest.approx(y["score"], abs=1e-4)
