"""Record the names the real TensorRT Python bindings export, from the wheels on PyPI.

TensorRT cannot be imported on a machine without its libraries and a GPU, yet our
backend (dropcov_deploy/backends/tensorrt/) must work with TensorRT 10.x and 11.x.
The bindings wheels (`tensorrt-cu12-bindings`, `tensorrt-cu13-bindings`) carry the
compiled pybind11 module, and pybind11 registers every class, method, property and
enum member by a C string literal: those literals sit in the module's `.rodata`
section. This script downloads one wheel with pip, reads the NUL-terminated strings
of `.rodata` (like `strings`, but by section and by NUL so that string boundaries are
exact), keeps the identifier-like ones, adds the names the wheel's pure-Python
`__init__.py` defines (`__version__`, `nptype`, `volume`, ...), and writes the sorted,
deduplicated set, one per line, to `tests/data/tensorrt_names/<version>.txt`.
`tests/test_tensorrt_api.py` checks every TensorRT name our code uses against them.

One caveat shapes how the files are read: the linker merges a string literal into the
tail of a longer one ("Builder" may be stored only as the end of "IExprBuilder",
"float16" only as the end of "bfloat16"). A name is therefore present when it equals
a recorded string or ends one; the test applies that rule. For the same reason the
last identifier of a non-identifier string (a docstring ending in "... FP16") is kept.

Regenerate (needs network access to PyPI; writes the files and README.md beside them):

    .venv/bin/python scripts/tensorrt_names.py 10.3.0 10.16.1.11 11.4.0.106

Options: `--package` picks the wheel per version (default: tensorrt-cu12-bindings for
10.x and tensorrt-cu13-bindings for 11.x, CUDA 13 being 11.x's default); `--out`
changes the folder. A version's file is named by the exact wheel version.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "tensorrt_names"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TRAILING_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)$")
MIN_LENGTH = 3  # shorter NUL-terminated runs in .rodata are mostly binary noise
# The wheels are built for one CPython and manylinux; pin them so any Python can fetch them.
PIP_PLATFORM = [
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--only-binary=:all:",
]


def default_package(version: str) -> str:
    return "tensorrt-cu12-bindings" if int(version.split(".")[0]) < 11 else "tensorrt-cu13-bindings"


def download(package: str, version: str, folder: Path) -> Path:
    """`pip download --no-deps` one bindings wheel; returns its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *PIP_PLATFORM, f"{package}=={version}", "-d", str(folder)]
    subprocess.run(command, check=True)
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {package}=={version}, found {[w.name for w in wheels]}")
    return wheels[0]


def elf_section(data: bytes, wanted: str) -> bytes:
    """The bytes of one section of a 64-bit little-endian ELF file (what the wheels hold)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    for name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_offset + name)
        if data[names_offset + name : end].decode() == wanted:
            return data[offset : offset + size]
    raise SystemExit(f"no {wanted} section")


def rodata_names(module: bytes) -> set[str]:
    """Identifier-like NUL-terminated strings of .rodata, and the identifier ending each other string."""
    names: set[str] = set()
    for chunk in elf_section(module, ".rodata").split(b"\0"):
        try:
            text = chunk.decode("ascii")
        except UnicodeDecodeError:
            continue
        if not text or not all(" " <= c <= "~" or c in "\n\t" for c in text):
            continue
        if IDENTIFIER.fullmatch(text):
            names.add(text)
        elif (match := TRAILING_IDENTIFIER.search(text)) is not None:
            names.add(match.group(1))
    return {name for name in names if len(name) >= MIN_LENGTH and not name.startswith("_Z")}


def python_names(source: str) -> set[str]:
    """Names the wheel's __init__.py defines at module level or sets on a class (`X.attr = ...`)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
    return names


def names_from_wheel(wheel: Path) -> tuple[set[str], str]:
    with zipfile.ZipFile(wheel) as archive:
        members = archive.namelist()
        modules = [m for m in members if re.fullmatch(r"tensorrt_bindings/tensorrt[^/]*\.so", m)]
        if len(modules) != 1:
            raise SystemExit(f"{wheel.name}: expected one compiled tensorrt module, found {modules}")
        names = rodata_names(archive.read(modules[0]))
        if "tensorrt_bindings/__init__.py" in members:
            names |= python_names(archive.read("tensorrt_bindings/__init__.py").decode())
    return names, modules[0]


def write_readme(out: Path, rows: dict[str, str]) -> None:
    readme = out / "README.md"
    existing: dict[str, str] = {}
    if readme.exists():
        for line in readme.read_text().splitlines():
            if line.startswith("| ") and not line.startswith("| version") and not line.startswith("| ---"):
                existing[line.split("|")[1].strip()] = line
    existing.update(rows)
    body = [
        "# TensorRT Python binding names",
        "",
        "Generated by `scripts/tensorrt_names.py` (see its docstring to regenerate); read by",
        "`tests/test_tensorrt_api.py`. One identifier per line: the NUL-terminated identifier strings of",
        "the compiled module's `.rodata` plus the names its `__init__.py` defines. A name is present when it",
        "equals a line or ends one (the linker merges string literals into the tails of longer ones).",
        "",
        "| version | wheel | sha256 | module | names |",
        "| --- | --- | --- | --- | --- |",
        *[existing[key] for key in sorted(existing, key=lambda v: [int(p) if p.isdigit() else p for p in re.split(r"[.]", v)])],
        "",
    ]
    readme.write_text("\n".join(body))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", help="exact wheel versions, e.g. 10.3.0 11.4.0.106")
    parser.add_argument("--package", help="the bindings package (default: by major version)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, str] = {}
    for version in args.versions:
        package = args.package or default_package(version)
        with tempfile.TemporaryDirectory(prefix="trt-names-") as tmp:
            wheel = download(package, version, Path(tmp))
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            names, module = names_from_wheel(wheel)
        target = args.out / f"{version}.txt"
        target.write_text("".join(f"{name}\n" for name in sorted(names)))
        rows[version] = f"| {version} | {wheel.name} | {digest} | {module} | {len(names)} |"
        print(f"{target.relative_to(REPO) if target.is_relative_to(REPO) else target}: {len(names)} names from {wheel.name}")
    write_readme(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
