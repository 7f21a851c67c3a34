"""The shared base every layer stands on: config schema and validation (``core.config``), image I/O
(``core.io``), ONNX sessions in ONNX Runtime or OpenVINO (``core.onnxrt``) and the offline switches
(``core.offline``).

Layers, top to bottom: tools -> pipelines -> detection, classification -> core. core imports nothing of the
project.
"""
