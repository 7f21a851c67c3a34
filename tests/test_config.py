"""Configs are checked once, fully, against their schemas: types, choices, ranges, the closest key for a typo."""

import pytest

from conftest import ROOT
from core.config import ConfigError, Field, validate


def test_field_choices_ranges_and_typo_hint():
    schema = {"mode": Field(str, "a", "what", choices=("a", "b")), "share": Field(float, 0.5, "x", min=0.0, max=1.0),
              "margin": Field(float, 0.75, "y", min=0.0)}
    assert validate({"mode": "b"}, schema, "t") == {"mode": "b", "share": 0.5, "margin": 0.75}
    with pytest.raises(ConfigError, match=r"'mode' must be one of \['a', 'b'\], not 'c'"):
        validate({"mode": "c"}, schema, "t")
    with pytest.raises(ConfigError, match=r"'share' must be in \[0.0, 1.0\], not 1.5"):
        validate({"share": 1.5}, schema, "t")
    with pytest.raises(ConfigError, match=r"'margin' must be in \[0.0, inf\]"):
        validate({"margin": -3}, schema, "t")
    with pytest.raises(ConfigError, match="did you mean 'margin'"):
        validate({"margn": 1.0}, schema, "t")


@pytest.mark.parametrize("line,new,match", [
    ("crop_margin: 0.75", "crop_margin: -3", "'crop_margin' must be in"),
    ("min_leukocytes: 200", "min_leukocytes: 0", "'min_leukocytes' must be in"),
    ("prognosis_threshold: 0.02", "prognosis_threshold: 2", "'prognosis_threshold' must be in"),
    ("crop_margin: 0.75", "crop_margn: 0.75", "did you mean 'crop_margin'"),
    ("onnx_runtime: openvino", "onnx_runtime: tensorrt", "'onnx_runtime' must be one of"),
])
def test_pipeline_config_refuses_out_of_range_values(tmp_path, line, new, match):
    from pipelines.pipeline import load_pipeline_config

    text = (ROOT / "configs" / "pipeline" / "default.yaml").read_text()
    assert line in text
    (tmp_path / "bad.yaml").write_text(text.replace(line, new, 1))
    with pytest.raises(ConfigError, match=match):
        load_pipeline_config(tmp_path / "bad.yaml")


def test_list_fields_check_their_size_and_each_item():
    from core.config import ConfigError, Field, validate

    schema = {"white": Field(list, None, "rgb", min=1.0, max=255.0, size=3), "labels": Field(list, None, "free")}
    assert validate({"white": [254, 230, 205], "labels": ["a", 1]}, schema, "cfg")["white"] == [254, 230, 205]
    for bad, msg in (([254, 230], "must have 3 items"), ([0, 230, 205], r"must be in \[1.0, 255.0\]"),
                     (["a", 230, 205], "must be in"), ([True, 230, 205], "must be in")):
        with pytest.raises(ConfigError, match=f"'white' {msg}"):
            validate({"white": bad}, schema, "cfg")


def test_onnx_runtime_reaches_the_detector_and_every_cpu_config_names_one():
    """The pipeline's onnx_runtime is the detector's runtime too; the shipped CPU configs run OpenVINO, gpu.yaml
    (PyTorch weights) keeps the default."""
    from pipelines.pipeline import load_pipeline_config

    for name, runtime in (("default", "openvino"), ("fast", "openvino"), ("accurate", "openvino"),
                          ("lowmag", "openvino"), ("eval_detection", "openvino"), ("gpu", "onnxruntime")):
        cfg = load_pipeline_config(ROOT / "configs" / "pipeline" / f"{name}.yaml")
        assert cfg["onnx_runtime"] == cfg["detector_cfg"]["runtime"] == runtime, name


def test_a_detector_runtime_that_contradicts_the_pipeline_is_refused(tmp_path):
    from pipelines.pipeline import load_pipeline_config

    det = (ROOT / "configs" / "detector" / "yolov8n_320_int8.yaml").read_text().replace(
        "detection/weights", str(ROOT / "detection" / "weights"))
    (tmp_path / "det.yaml").write_text(det + "runtime: onnxruntime\n")
    text = (ROOT / "configs" / "pipeline" / "default.yaml").read_text()
    (tmp_path / "p.yaml").write_text(text.replace("detector: configs/detector/yolov8n_320_int8.yaml",
                                                  f"detector: {tmp_path / 'det.yaml'}"))
    with pytest.raises(ConfigError, match="set it once, in the pipeline config"):
        load_pipeline_config(tmp_path / "p.yaml")
    (tmp_path / "det.yaml").write_text(det + "runtime: openvino\n")  # the same value is fine
    assert load_pipeline_config(tmp_path / "p.yaml")["detector_cfg"]["runtime"] == "openvino"
