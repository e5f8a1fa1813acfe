"""Where dropcov-deploy keeps what it can recompute: precision graphs, the `models` table.

$DROPCOV_CACHE, else $XDG_CACHE_HOME/dropcov-deploy, else ~/.cache/dropcov-deploy. Every
entry is keyed so that a stale one is never read as current (build_cache; the models table
by package, torch and timm versions).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$DROPCOV_CACHE, else $XDG_CACHE_HOME/dropcov-deploy, else ~/.cache/dropcov-deploy."""
    if os.environ.get("DROPCOV_CACHE"):
        return Path(os.environ["DROPCOV_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dropcov-deploy"
