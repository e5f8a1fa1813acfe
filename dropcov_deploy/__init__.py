"""dropcov-deploy: DropCov models from PyTorch to verified ONNX / TensorRT inference.

This top-level module stays import-light on purpose: the runtime path (load an
artifact, run it) must work on an edge board that has neither torch nor TensorRT,
so heavy libraries are imported only by the submodules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
