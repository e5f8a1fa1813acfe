"""Precision work on the ONNX graph: FP16 (AutoCast), INT8 (Q/DQ), calibration.

Precision lives in the ONNX (TensorRT 11 builds only strongly typed networks), so it
is produced and checked here, with ONNX Runtime, on any machine.
"""
