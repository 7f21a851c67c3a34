"""One way to open an ONNX model for the pipeline (detector and classifiers), in ONNX Runtime or OpenVINO."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

# OpenVINO's inference precision per runtime. OpenVINO's own default on CPUs with native bfloat16 (AVX512_BF16, AMX:
# AMD Zen 4, Intel Sapphire Rapids and later) is bf16, which moved the shipped classifier's probabilities by up to
# 0.16 and its top class on 1 BCCD cell in 100 (docs/RESULTS.md "Speed"): results would depend on the CPU, so
# "openvino" pins f32 and bf16 is asked for by name.
OPENVINO_PRECISION = {"openvino": "f32", "openvino_bf16": "bf16"}
RUNTIMES = ("onnxruntime", *OPENVINO_PRECISION)


def runtime_tag(runtime: str) -> str:
    """What a model's name gains when it runs outside ONNX Runtime (runs record it in fields.jsonl ``versions``)."""
    return "" if runtime == "onnxruntime" else f":{runtime}"


def openvino_cache_dir() -> str | None:
    """Where OpenVINO keeps compiled models between runs (about 1 s less start-up per run on a 2-core CPU):
    ``$LEUKODIFF_OV_CACHE``, else ``$XDG_CACHE_HOME/leukodiff/openvino`` (``~/.cache/...``); None when that is set
    empty or cannot be created. OpenVINO keys each entry by the model file, its settings and its own version."""
    path = os.environ.get("LEUKODIFF_OV_CACHE")
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "leukodiff", "openvino")
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def onnx_session(path: Path, device: str, what: str, runtime: str = "onnxruntime"):
    """A session for the ONNX model ``path`` on ``device`` (``cpu`` or ``cuda[:i]``) with ONNX Runtime's interface
    (``run(None, feeds)``, ``get_inputs()``, ``get_modelmeta().custom_metadata_map``). ``runtime``: ``onnxruntime``
    (full graph optimization, idle threads not spinning: measured 10-20% fewer fields/s with spinning, the decode
    threads lose the cores) or ``openvino`` (CPU only; the same model file, 1.5-2x faster on x86 CPUs here,
    docs/RESULTS.md "Speed"; f32) or ``openvino_bf16`` (bfloat16 where the CPU has it). ``what`` names the model in
    errors. Raises ``ValueError`` for CUDA without a CUDA provider or with OpenVINO: the model would run on the CPU
    unnoticed."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown ONNX runtime '{runtime}' for the {what}; valid: {', '.join(RUNTIMES)}")
    if runtime in OPENVINO_PRECISION:
        if device != "cpu":
            raise ValueError(f"--device {device}: the ONNX {what} {Path(path).name} is set to run in OpenVINO, which "
                             "runs on the CPU here; use --config configs/pipeline/gpu.yaml (PyTorch models) on a GPU")
        return OpenVinoSession(path, OPENVINO_PRECISION[runtime])
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


class OpenVinoSession:
    """An ONNX model compiled by OpenVINO for the CPU (latency hint: one stream over all cores, dynamic batch and
    image axes kept; compiled models cached in ``openvino_cache_dir``), behind the part of ONNX Runtime's
    ``InferenceSession`` interface the pipeline uses. The model's metadata (class names, a classifier's export
    record) is read from the file with ``onnx``; the inputs are the compiled model's. One inference request: call
    ``run`` from one thread at a time (the pipeline does; each Ray actor builds its own). ``precision``: OpenVINO's
    inference precision, ``f32`` (the same results on every CPU) or ``bf16`` (faster where the CPU has native
    bfloat16; elsewhere OpenVINO falls back to f32, by its documentation: not tried here)."""

    def __init__(self, path: Path, precision: str = "f32"):
        import onnx
        import openvino as ov

        self._meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        core = ov.Core()
        cache = openvino_cache_dir()
        if cache:
            core.set_property({"CACHE_DIR": cache})
        self.model = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                             "INFERENCE_PRECISION_HINT": precision})
        self.request = self.model.create_infer_request()

    def get_inputs(self):
        return [SimpleNamespace(name=i.get_any_name()) for i in self.model.inputs]

    def get_modelmeta(self):
        return SimpleNamespace(custom_metadata_map=dict(self._meta))

    def run(self, output_names, feeds: dict) -> list:
        """Outputs in the model's order, as arrays the caller owns (``output_names`` must be None)."""
        if output_names is not None:
            raise ValueError("OpenVinoSession.run returns every output: pass None")
        res = self.request.infer(feeds)
        return [res[o].copy() for o in self.model.outputs]
