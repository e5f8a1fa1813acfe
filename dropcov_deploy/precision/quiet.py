"""One way to keep ModelOpt's and ONNX Runtime's quantizers quiet.

They log per node and draw unlabelled tqdm bars on stderr; our CLI shows its own
steps. Loggers go to ERROR, tqdm is disabled and stray prints are swallowed for the
duration, then everything is put back.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

QUANTIZER_LOGGERS = ("modelopt", "autocast", "onnx2trt", "polygraphy", "onnxruntime", "root")


def _silence_imported_tqdm() -> list[tuple[Any, Any]]:
    """Modules of the quantizers that already imported `tqdm` (ModelOpt's ORT patches draw a bar per
    calibration pass) get a tqdm that draws nothing; returns what to put back."""
    try:
        import tqdm
    except ImportError:
        return []
    quiet = functools.partial(tqdm.tqdm, disable=True)
    swapped = []
    for name, module in list(sys.modules.items()):
        if name.startswith(("modelopt", "onnxruntime")) and getattr(module, "tqdm", None) is tqdm.tqdm:
            swapped.append((module, tqdm.tqdm))
            setattr(module, "tqdm", quiet)  # noqa: B010 - modules of others, patched for the duration
    return swapped


@contextlib.contextmanager
def quiet_quantizers() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in QUANTIZER_LOGGERS}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    # AutoCast configures its own logger (older ModelOpt has none: silenced above). Only when its
    # caller has imported it: importing ModelOpt costs seconds that an ONNX Runtime build never needs.
    autocast = sys.modules.get("modelopt.onnx.autocast")
    if autocast is not None and hasattr(autocast, "configure_logging"):
        autocast.configure_logging("ERROR")
    tqdm_was = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is first imported only
    silenced = _silence_imported_tqdm()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for module, original in silenced:
            setattr(module, "tqdm", original)  # noqa: B010
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if tqdm_was is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_was
