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
            f"heavy = [m for m in ('torch', 'ultralytics', 'fiftyone', 'timm', 'cv2') if m in sys.modules]\n"
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
    assert "Speed-up of the best pipeline batch" in (tmp_path / "out" / "latency.md").read_text()
