"""The CLI as users meet it: `models`, `inspect`, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
from cli_helpers import assert_one_line_error, run_cli, run_cli_subprocess


def test_models_table_lists_architectures_with_sizes():
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    for name in ["resnet18_ACD", "resnet34_ACD", "resnet50_ACD", "resnet101_ACD", "resnet152_ACD"]:
        assert name in result.stdout
    assert "32.03 M" in result.stdout  # resnet50_ACD at d=128


def test_models_json(models_json):
    rows = models_json
    by_name = {row["arch"]: row for row in rows}
    assert by_name["resnet50_ACD"]["default_dim"] == 128
    assert round(by_name["resnet101_ACD"]["params_d128"] / 1e6, 1) == 51.0


def test_inspect_authors_checkpoint(authors_checkpoint):
    path, _ = authors_checkpoint(arch="resnet18_ACD", dim=8, num_classes=3)
    result = run_cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["arch"], data["dim"], data["num_classes"], data["source_format"]) == ("resnet18_ACD", 8, 3, "upstream")


def test_bad_inputs_give_one_line_and_exit_code_2(tmp_path, authors_checkpoint):
    path, _ = authors_checkpoint(arch="resnet50_ACD", dim=8, num_classes=3)
    assert_one_line_error(run_cli("inspect", path, "--arch", "resnet18_ACD"), 2, str(path), "do not fit resnet18_ACD")
    assert_one_line_error(run_cli("inspect", path, "--arch", "nosuchnet"), 2, "unknown architecture 'nosuchnet'")
    missing = tmp_path / "missing.pth"
    assert_one_line_error(run_cli_subprocess("inspect", missing), 2, str(missing), "no such file")  # a real process's stderr and exit status
    noise = tmp_path / "noise.pth.tar"
    noise.write_bytes(bytes(range(256)) * 40)
    assert_one_line_error(run_cli("inspect", noise), 2, str(noise), "not a")
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(path.read_bytes()[:5000])
    assert_one_line_error(run_cli("inspect", truncated), 2, str(truncated), "truncated or corrupt")


def test_version_and_help():
    assert run_cli_subprocess("--version").stdout.strip().startswith("dropcov-deploy ")
    result = run_cli_subprocess("--help")
    assert result.returncode == 0 and "models" in result.stdout


def test_console_script_is_installed():
    from pathlib import Path

    script = Path(sys.executable).parent / "dropcov-deploy"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (package not pip-installed here)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "inspect" in result.stdout


def test_inspect_plan_without_manifest_is_refused(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00" * 64)  # bad input, not an engine: the error must come before any TensorRT use
    assert_one_line_error(run_cli("inspect", plan), 2, str(plan), "no manifest beside it")
