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
