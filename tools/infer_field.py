#!/usr/bin/env python
"""Leukocyte differential of microscope fields: detect, crop, classify, count per smear (``--help``; the command
line lives in ``pipelines.cli``, where evaluation tools reuse it)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.cli import infer_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return infer_main(argv)


if __name__ == "__main__":
    sys.exit(main())
