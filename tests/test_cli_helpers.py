"""The test harness itself: `run_cli` in this process behaves as the real `dropcov-deploy` does."""

import json
import os
import shutil

import pytest
from cli_helpers import assert_one_line_error, needs_process, run_cli, run_cli_subprocess


@pytest.mark.slow
@pytest.mark.parametrize("command", ["models", "inspect-checkpoint", "inspect-onnx", "verify"])
def test_in_process_stdout_is_what_the_process_prints(command, seeded_digits):
    checkpoint, onnx_path = seeded_digits
    args = {
        "models": ["models", "--json"],
        "inspect-checkpoint": ["inspect", checkpoint, "--json"],
        "inspect-onnx": ["inspect", onnx_path, "--json"],
        "verify": ["verify", "-c", checkpoint, onnx_path, "--random", "8", "--json"],
    }[command]
    inside, real = run_cli(*args), run_cli_subprocess(*args)
    assert inside.returncode == real.returncode == 0, (inside.stderr, real.stderr)
    if command == "verify":  # the one field that differs from run to run: the wall time
        first, second = json.loads(inside.stdout), json.loads(real.stdout)
        assert first.pop("seconds") >= 0 and second.pop("seconds") >= 0
        assert first == second
    else:
        assert inside.stdout == real.stdout


def test_an_unexpected_exception_is_mapped_as_main_maps_it(monkeypatch):
    import dropcov_deploy.model_table

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(dropcov_deploy.model_table, "cached_architecture_rows", broken)
    result = run_cli("models")
    assert result.returncode == 70 and "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: unexpected RuntimeError")


def test_cwd_and_env_hold_for_the_call_only(seeded_digits, tmp_path):
    checkpoint, _ = seeded_digits
    shutil.copy(checkpoint, tmp_path / "here.pt")
    before, environ = os.getcwd(), dict(os.environ)
    result = run_cli("inspect", "here.pt", "--json", cwd=tmp_path, env={"DROPCOV_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["arch"] == "resnet10_compact_ACD"
    assert os.getcwd() == before and dict(os.environ) == environ
    assert_one_line_error(run_cli("inspect", "here.pt"), 2, "here.pt", "no such file")  # back in the old cwd
    assert needs_process({"PYTHONPATH": "x"}) and not needs_process({"DROPCOV_CACHE": "x"})
