"""Run-time offline settings: nothing reaches the network unless the user asked for a download."""

from __future__ import annotations

import os


def set_offline() -> None:
    """Environment for Ultralytics (no DNS probes, no settings sync), FiftyOne (no tracking) and Hugging Face /
    timm (no hub lookups). Call before those libraries are imported; existing values are kept."""
    for k, v in {"YOLO_OFFLINE": "1", "FIFTYONE_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1",
                 "HF_HUB_DISABLE_TELEMETRY": "1", "FIFTYONE_DATABASE_VALIDATION": "false"}.items():
        os.environ.setdefault(k, v)
