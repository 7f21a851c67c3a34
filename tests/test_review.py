"""FiftyOne review: conversions, a dataset built from a small run with ground truth and evaluation, and (slow) the
app launched on a free port and loaded in headless Chromium."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from pipelines.fo_convert import rel_xywh_to_xyxy, xyxy_to_rel_xywh
from pipelines.cli import infer_main


def test_box_conversions_roundtrip_and_clip():
    rel = xyxy_to_rel_xywh([73.2, 57.4, 366.0, 287.0], 732, 574)
    assert rel == pytest.approx([0.1, 0.1, 0.4, 0.4])
    assert rel_xywh_to_xyxy(rel, 732, 574) == pytest.approx([73.2, 57.4, 366.0, 287.0])
    assert xyxy_to_rel_xywh([-10, -5, 800, 600], 732, 574) == pytest.approx([0, 0, 1, 1])


@pytest.fixture(scope="module")
def review_run(tiny_models, synthetic_dir, tmp_path_factory):
    """A small run (6 synthetic fields + 1 unreadable file) and its ground truth as COCO JSON."""
    d = tmp_path_factory.mktemp("review")
    fields = d / "fields"
    shutil.copytree(synthetic_dir, fields)
    (fields / "smear_01" / "broken.png").write_bytes(b"\x89PNG broken")
    out = d / "run"
    infer_main([str(fields), "--out", str(out), "--config", str(tiny_models["pipeline"]), "--no-progress"])
    lines = (out / "fields.jsonl").read_text().splitlines()  # as if auto_scale had re-detected one field larger
    first = next(i for i, x in enumerate(lines) if not json.loads(x)["error"])
    lines[first] = json.dumps({**json.loads(lines[first]), "rescaled_imgsz": 576})
    (out / "fields.jsonl").write_text("\n".join(lines) + "\n")
    gt = json.loads((fields / "ground_truth.json").read_text())
    classes = ["WBC", "RBC", "Platelets"]
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    for i, (rel, g) in enumerate(sorted(gt.items()), 1):
        coco["images"].append({"id": i, "file_name": rel, "width": 732, "height": 574})
        for b, lab in zip(g["boxes"], g["labels"]):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i,
                                        "category_id": classes.index(lab) + 1,
                                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    (d / "gt.json").write_text(json.dumps(coco))
    return {"run": out, "gt": d / "gt.json", "n_gt_boxes": len(coco["annotations"]), "db": d / "db"}


def _env(db: Path) -> dict:
    env = dict(os.environ)
    env.update({"FIFTYONE_DATABASE_DIR": str(db), "FIFTYONE_DO_NOT_TRACK": "true",
                "FIFTYONE_DATABASE_VALIDATION": "false", "FIFTYONE_SHOW_PROGRESS_BARS": "false"})
    return env


CHECK = r"""
import json, sys
import fiftyone as fo
ds = fo.load_dataset(sys.argv[1])
print(json.dumps({"n": len(ds), "failed": len(ds.match_tags("failed")), "info": ds.info,
                  "small": len(ds.match_tags("small_cells")),
                  "views": ds.list_saved_views(),
                  "n_gt": ds.count("ground_truth.detections"), "n_pred": ds.count("predictions.detections"),
                  "tp": ds.sum("eval_tp"), "fp": ds.sum("eval_fp"), "fn": ds.sum("eval_fn"),
                  "empty": len(ds.exists("error", False).match({"predictions.detections": {"$size": 0}})),
                  "brain": ds.list_brain_runs(),
                  "points": (len(ds.load_brain_results("cell_embeddings").points)
                             if ds.has_brain_run("cell_embeddings") else 0),
                  "classified": ds.count("predictions.detections.pbc8_label")}))
"""


@pytest.mark.slow
def test_review_builds_dataset_with_evaluation(review_run, tiny_models):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "review.py"), str(review_run["run"]), "--gt",
                        str(review_run["gt"]), "--gt-format", "coco", "--name", "t_review",
                        "--embeddings", str(tiny_models["pbc8_ckpt"])],
                       capture_output=True, text=True, env=_env(review_run["db"]), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    c = subprocess.run([sys.executable, "-c", CHECK, "t_review"], capture_output=True, text=True,
                       env=_env(review_run["db"]), timeout=300)
    assert c.returncode == 0, c.stderr[-3000:]
    res = json.loads(c.stdout.strip().splitlines()[-1])
    recs = [json.loads(x) for x in (review_run["run"] / "fields.jsonl").read_text().splitlines()]
    assert res["n"] == len(recs) == 7 and res["failed"] == 1 and res["small"] == 1
    assert res["n_gt"] == review_run["n_gt_boxes"]
    assert res["n_pred"] == sum(len(x["cells"]) for x in recs)
    # every ground-truth box is a TP or an FN; every prediction of an evaluated field a TP or an FP
    assert res["tp"] + res["fn"] == review_run["n_gt_boxes"]
    assert res["tp"] + res["fp"] == res["n_pred"]
    assert "eval_patches" in res["views"] and any(v.startswith("cells_") for v in res["views"])
    assert res["info"]["with_ground_truth"] == 6
    # embeddings map: one point per cell the pbc8 classifier saw
    assert "cell_embeddings" in res["brain"] and res["points"] == res["classified"] > 0


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
def test_app_serves_dataset_in_headless_chromium(review_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium not installed (Debian package chromium; .ci/run installs it)")
    port = _free_port()
    app = subprocess.Popen([sys.executable, str(ROOT / "tools" / "review.py"), str(review_run["run"]), "--name",
                            "t_app", "--launch", "--port", str(port)], env=_env(review_run["db"]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/datasets/t_app"
        deadline, ok = time.time() + 240, False
        while time.time() < deadline and app.poll() is None:
            try:
                ok = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
                if ok:
                    break
            except OSError:
                time.sleep(1)
        assert ok, "app did not answer"
        shot = tmp_path / "app.png"
        r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,900",
                            "--virtual-time-budget=25000", "--run-all-compositor-stages-before-draw",
                            "--dump-dom", url], capture_output=True, text=True, timeout=180)
        dom = r.stdout
        assert "t_app" in dom, dom[-2000:]
        # the app opens on the review view: one patch per classified leukocyte, as the grid's count renders it
        recs = [json.loads(x) for x in (review_run["run"] / "fields.jsonl").read_text().splitlines()]
        n_leuko = sum(1 for x in recs for c in x["cells"] if c.get("classes"))
        assert n_leuko > 0 and "review_leukocytes" in dom
        assert f'data-cy="entry-count-all">{n_leuko}</span> patches' in dom, dom[-3000:]
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        f"--user-data-dir={tmp_path / 'chrome2'}", "--window-size=1400,900",
                        "--virtual-time-budget=25000", f"--screenshot={shot}", url], capture_output=True, timeout=180)
    finally:
        app.terminate()
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()


def test_ground_truth_matching_uses_longest_path_suffix():
    from pipelines.review import match_ground_truth

    gt = {"smear_01/field_001": "a", "smear_02/field_001": "b", "BloodImage_00001": "c"}
    assert match_ground_truth(gt, "/data/run/smear_02/field_001.png") == "b"
    assert match_ground_truth(gt, "/x/JPEGImages/BloodImage_00001.jpg") == "c"
    assert match_ground_truth(gt, "/x/field_001.png") is None


def test_reviewed_label_from_tags():
    from pipelines.review import reviewed_label

    classes = {"lymphocyte", "monocyte", "segmented_neutrophil"}
    assert reviewed_label(["monocyte"], "lymphocyte", classes) == "monocyte"  # corrected
    assert reviewed_label(["confirmed"], "lymphocyte", classes) == "lymphocyte"
    assert reviewed_label(["confirmed"], "unidentified", classes) is None  # nothing to confirm
    assert reviewed_label(["not_a_cell", "monocyte"], "lymphocyte", classes) is None
    assert reviewed_label([], "lymphocyte", classes) is None  # not reviewed
    with pytest.raises(ValueError, match="two classes"):
        reviewed_label(["monocyte", "lymphocyte"], "lymphocyte", classes)


def test_ground_truth_found_under_a_dataset_root_or_refused(tmp_path):
    from pipelines.review import read_ground_truth

    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "f1.xml").write_text(
        "<annotation><filename>f1.jpg</filename><size><width>10</width><height>10</height></size>"
        "<object><name>WBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "</annotation>")
    assert list(read_ground_truth(tmp_path, "voc", ["WBC"])) == ["f1"]  # the root, as users give it
    (tmp_path / "labels" / "test").mkdir(parents=True)
    (tmp_path / "labels" / "test" / "f2.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert list(read_ground_truth(tmp_path, "yolo", ["WBC"])) == ["f2"]
    with pytest.raises(ValueError, match="no voc annotations"):
        read_ground_truth(tmp_path / "labels", "voc", ["WBC"])
    with pytest.raises(ValueError, match="not found"):
        read_ground_truth(tmp_path / "nope", "voc", ["WBC"])


TAG = r"""
import sys
import fiftyone as fo
ds = fo.load_dataset(sys.argv[1])
patches = ds.load_saved_view("review_leukocytes")
ids = patches.values("leukocytes.id")
print(len(ids), sorted(ds.app_config.active_fields.paths))
patches.select_labels(ids=ids[:1], fields="leukocytes").tag_labels("monocyte", label_fields="leukocytes")
patches.select_labels(ids=ids[1:3], fields="leukocytes").tag_labels("confirmed", label_fields="leukocytes")
"""


@pytest.mark.slow
def test_review_tags_export_labels_for_adaptation(review_run, tmp_path):
    import csv

    env = _env(review_run["db"])
    cmd = [sys.executable, str(ROOT / "tools" / "review.py"), str(review_run["run"]), "--name", "t_export"]
    assert subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600).returncode == 0
    t = subprocess.run([sys.executable, "-c", TAG, "t_export"], capture_output=True, text=True, env=env, timeout=300)
    assert t.returncode == 0, t.stderr[-3000:]
    n, fields = t.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(n) > 3 and "leukocytes" in fields
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert refused.returncode == 2 and "review tag" in refused.stderr  # a rebuild would lose the review
    out = tmp_path / "labels"
    r = subprocess.run(cmd + ["--export-labels", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert len(rows) == 3 and sum(x["label"] == "monocyte" for x in rows) >= 1
    assert all((out / x["path"]).is_file() for x in rows)
