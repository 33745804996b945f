"""Running models outside eager PyTorch: ONNX export and ONNX Runtime sessions."""

from autocompress.runtime.onnx import export_onnx, ort_session, run_onnx

__all__ = ["export_onnx", "ort_session", "run_onnx"]
