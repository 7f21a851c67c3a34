"""Every tool: ``--help`` works without importing torch, ultralytics or fiftyone (instant help, no side effects)."""

import subprocess
import sys

import pytest

from conftest import ROOT

TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py"))


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_light(tool):
    code = (f"import sys; sys.argv=['{tool}', '--help']; sys.path.insert(0, {str(ROOT)!r})\n"
            f"import runpy\n"
            f"try:\n    runpy.run_path({str(ROOT / 'tools' / (tool + '.py'))!r}, run_name='__main__')\n"
            f"except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            f"heavy = [m for m in ('torch', 'ultralytics', 'fiftyone', 'timm', 'cv2', 'ray') if m in sys.modules]\n"
            f"print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()
    assert "HEAVY []" in r.stdout, r.stdout[-500:]


def test_tools_expose_main():
    for tool in TOOLS:
        src = (ROOT / "tools" / f"{tool}.py").read_text()
        assert "def main(argv: list[str] | None = None) -> int:" in src, tool


def test_latency_benchmark_interleaves_pipeline_and_baseline(tmp_path, synthetic_dir):
    """tools/benchmark.py latency on the shipped default pipeline: every round runs each batch size and the naive
    baseline; the speed-up is the median of the per-round ratios."""
    import json

    from tools.benchmark import main

    fields = sorted(synthetic_dir.rglob("*.png"))[:3]
    for f in fields:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f.name).write_bytes(f.read_bytes())
    assert main(["latency", "--fields", str(tmp_path / "in"), "--batches", "1", "2", "--repeat", "2",
                 "--out", str(tmp_path / "out")]) == 0
    o = json.loads((tmp_path / "out" / "latency.json").read_text())
    assert set(o["pipeline"]) == {"1", "2"} and o["fields"] == 3
    assert all(len(v["fields_per_s_runs"]) == 2 and v["detect"]["p50"] > 0 for v in o["pipeline"].values())
    runs = o["pipeline"][str(o["best_batch"])]["fields_per_s_runs"]
    ratios = [a / b for a, b in zip(runs, o["baseline"]["fields_per_s_runs"])]
    assert o["speedup_runs"] == [round(x, 2) for x in ratios] and o["speedup"] > 0
    md = (tmp_path / "out" / "latency.md").read_text()
    assert "Speed-up of the best pipeline batch" in md
    # the table says what ran: the default's OpenVINO (f32), and the CPU's model with its int8 / bf16 features
    assert o["onnx_runtime"] == "openvino" and "(onnx_runtime openvino)" in md and o["cpu"] in md


def test_eval_classifier_scaled_copies(tmp_path):
    """tools/eval_classifier.py --scale: downscaled PNG copies, made once, mapped back to their originals."""
    import numpy as np

    from core.io import read_image, write_image
    from tools.eval_classifier import main, scaled_copies

    samples = []
    for k in range(2):
        p = tmp_path / f"cell{k}.jpg"
        write_image(p, np.full((80, 100, 3), 60 * k, np.uint8))
        samples.append((p, "neutrophil"))
    copies, origin = scaled_copies(samples, 0.5, tmp_path / "scaled")
    assert [lab for _, lab in copies] == ["neutrophil"] * 2
    assert [read_image(p).shape for p, _ in copies] == [(40, 50, 3)] * 2
    assert origin[str(copies[1][0])] == str(samples[1][0].resolve())
    mtime = copies[0][0].stat().st_mtime_ns
    assert scaled_copies(samples, 0.5, tmp_path / "scaled")[0] == copies and copies[0][0].stat().st_mtime_ns == mtime
    with pytest.raises(SystemExit):
        main(["--task", "pbc8", "--run", str(tmp_path / "run"), "--scale", "0"])


@pytest.mark.slow
@pytest.mark.realdata
def test_gpu_check_script_runs_on_cpu_up_to_the_cuda_calls(data_root, tmp_path):
    """tools/gpu_check.sh with GPU_CHECK_DEVICE=cpu: the same steps a GPU machine runs, a few fields."""
    import os
    import subprocess

    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_REPEAT": "1", "GPU_CHECK_LIMIT": "4",
           "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path / "g")], capture_output=True,
                       text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch" in (tmp_path / "g" / "device.txt").read_text()
    assert (tmp_path / "g" / "latency" / "latency.md").exists()
    assert "WBC" in (tmp_path / "g" / "detection.log").read_text()


def test_eval_labs_illuminant_casts_every_image_and_refuses_bad_gains(capsys):
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    import eval_labs

    im = np.full((4, 4, 3), (200, 180, 160), np.uint8)
    out = eval_labs.cast(im, (1.0, 0.9, 0.55))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [200, 162, 88]
    assert eval_labs.cast(im, (1.5, 1.0, 1.0))[0, 0, 0] == 255  # clipped, not wrapped
    assert eval_labs.main(["--configs", "x.yaml", "--out", "unused", "--illuminant", "0", "1", "1"]) == 2
    assert "--illuminant" in capsys.readouterr().err


def test_eval_labs_shifts_change_images_as_named_and_refuse_bad_values(capsys):
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    import eval_labs

    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    tight = eval_labs.parse_shift("tight:0.5")(im)
    assert tight.shape == (30, 40, 3) and (tight == im[15:45, 20:60]).all()
    for kind in ("blur:2", "jpeg:30", "lowres:0.25"):
        out = eval_labs.parse_shift(kind)(im)
        assert out.shape == im.shape and out.dtype == np.uint8
        assert out.astype(float).std() < im.astype(float).std() - 5  # noise is smoothed or lost, not kept
    assert eval_labs.parse_shift(None) is None
    for bad in ("fog:1", "jpeg:x", "lowres:2", "tight"):
        assert eval_labs.main(["--configs", "x.yaml", "--out", "unused", "--shift", bad]) == 2
        assert "--shift" in capsys.readouterr().err


def test_background_white_tool_reads_your_cells(tmp_path, capsys):
    import cv2
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    import background_white

    for i in range(3):
        img = np.full((40, 40, 3), (120, 200, 240), np.uint8)  # BGR on disk: RGB (240, 200, 120), a yellow cast
        cv2.circle(img, (20, 20), 8, (150, 60, 90), -1)
        cv2.imwrite(str(tmp_path / f"c{i}.png"), img)
    assert background_white.main(["--images", str(tmp_path), "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "3 crops" in out and "mean [240.0, 200.0, 120.0]" in out
    assert background_white.main(["--images", str(tmp_path / "none")]) == 2


def test_average_classifiers_averages_one_network_and_refuses_two(tmp_path, tiny_models, capsys):
    """Weight-space average of two checkpoints of one network: every float tensor at (1 - alpha, alpha), the first's
    metadata and temperature (--keep-temperature), a checkpoint the pipeline loads; different networks, an alpha
    outside [0, 1] and --out over an input are refused."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    import average_classifiers

    from classification.classifier import Classifier
    from classification.models import build_backbone, save_checkpoint
    from classification.taxonomies import TAXONOMIES

    a = tiny_models["pbc8_ckpt"]
    torch.manual_seed(1)
    b = save_checkpoint(tmp_path / "b.pt", build_backbone("tiny_cnn", 8), "tiny_cnn", "pbc8", TAXONOMIES["pbc8"], 32,
                        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), temperature=2.0)
    out = tmp_path / "soup.pt"
    assert average_classifiers.main([str(a), str(b), "--alpha", "0.25", "--out", str(out), "--keep-temperature"]) == 0
    sa, sb, ck = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b, out))
    floats = [k for k, v in ck["state_dict"].items() if v.is_floating_point()]
    assert floats and not torch.equal(sa["state_dict"][floats[0]], sb["state_dict"][floats[0]])
    for k in floats:
        torch.testing.assert_close(ck["state_dict"][k], 0.75 * sa["state_dict"][k] + 0.25 * sb["state_dict"][k])
    assert ck["temperature"] == 1.0 and ck["training"]["soup"]["alpha"] == 0.25 and ck["classes"] == sa["classes"]
    assert Classifier(out).classify([np.zeros((40, 40, 3), np.uint8)]).shape == (1, 8)
    capsys.readouterr()
    for bad, why in (([str(a), str(tiny_models["wang11_ckpt"])], "differ in"), ([str(a), str(b), "--alpha", "1.5"],
                     "alpha must be in"), ([str(a), str(b), "--out", str(a)], "give a new .pt path")):
        args = bad + ([] if "--out" in bad else ["--out", str(tmp_path / "x.pt")]) + ["--keep-temperature"]
        assert average_classifiers.main(args) == 2
        assert why in capsys.readouterr().err


def test_stain_probe_measures_nucleus_colour_and_blast_shares(tmp_path, tiny_models, capsys):
    """stain_probe: each set's nucleus optical-density direction (a bluer and a more magenta set differ), the blast
    share per view with --weights, the JSON; a malformed --sets is refused."""
    import json

    import cv2
    import numpy as np
    import torch

    from classification.preprocess import nucleus_od_direction
    from classification.train import scale_stain

    sys.path.insert(0, str(ROOT / "tools"))
    import stain_probe

    for name, rgb in (("blue", (90, 60, 160)), ("magenta", (160, 50, 140))):
        (tmp_path / name).mkdir()
        for i in range(3):
            img = np.full((40, 40, 3), 250, np.uint8)
            cv2.circle(img, (20, 20), 9 + i, rgb[::-1], -1)  # BGR on disk
            cv2.imwrite(str(tmp_path / name / f"c{i}.png"), img)
    crop = np.full((1, 20, 20, 3), 255, np.uint8)
    crop[0, 5:15, 5:15] = (90, 60, 160)
    od = -np.log(np.array([90, 60, 160]) / 255.0)
    np.testing.assert_allclose(nucleus_od_direction(crop)[0], od / np.linalg.norm(od), atol=1e-4)
    x = torch.from_numpy(crop).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(scale_stain(x, 0, 1.0).numpy(), x.numpy(), atol=1e-4)
    darker = scale_stain(x, 0, 2.0)
    assert float(darker[0, :, 10, 10].sum()) < float(x[0, :, 10, 10].sum()) and float(darker[0, :, 0, 0].min()) > 0.99

    out = tmp_path / "probe.json"
    assert stain_probe.main(["--data", "--sets", f"blue={tmp_path / 'blue'}", f"magenta={tmp_path / 'magenta'}",
                             "--weights", str(tiny_models["wang11_ckpt"]), "--size", "32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["sets"]
    assert res["blue"]["crops"] == 3 and abs(res["blue"]["degrees_from_haematoxylin"] -
                                             res["magenta"]["degrees_from_haematoxylin"]) > 5
    assert set(res["magenta"]["blast"]) == set(stain_probe.VIEWS)
    assert all(0.0 <= v <= 1.0 for r in res.values() for v in r["blast"].values())
    assert "| blue | 3 |" in capsys.readouterr().out
    assert stain_probe.main(["--data", "--sets", "nameless"]) == 2
