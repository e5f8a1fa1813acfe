"""The package and its CLI import without torch, TensorRT, ModelOpt or CUDA."""

import subprocess
import sys

HEAVY = ["torch", "torchvision", "tensorrt", "modelopt", "onnx", "onnxruntime", "numpy", "cuda", "pycuda"]


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in result.stdout.split()}


def test_import_package_loads_no_heavy_library():
    loaded = _modules_after("import dropcov_deploy")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_cli_help_path_loads_no_heavy_library():
    # `dropcov-deploy --help` imports exactly this; keeping it light is what keeps --help fast.
    loaded = _modules_after("import dropcov_deploy.cli, dropcov_deploy.errors, dropcov_deploy.console")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
