"""One way to open an ONNX Runtime session for the pipeline's models (detector and classifiers)."""

from __future__ import annotations

from pathlib import Path


def onnx_session(path: Path, device: str, what: str):
    """An ``InferenceSession`` for ``path`` on ``device`` (``cpu`` or ``cuda[:i]``), full graph optimization, idle
    threads not spinning (measured: 10-20% fewer fields/s with spinning, the decode threads lose the cores).
    ``what`` names the model in errors. Raises ``ValueError`` for CUDA without a CUDA provider: the model would run
    on the CPU unnoticed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise ValueError(f"--device {device}: this ONNX Runtime has no CUDA provider, so the ONNX {what} "
                         f"{Path(path).name} would run on the CPU; use --config configs/pipeline/gpu.yaml (PyTorch "
                         "models) or install onnxruntime-gpu")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else \
        ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=[p for p in providers if p in available])
