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


def _commands():
    """Every leaf command of the app as (words, click command): `build`, `debug precision`, ..."""
    import typer.main

    from dropcov_deploy.cli import app

    def walk(command, words):  # Typer vendors click: a group is what has sub-commands
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                yield from walk(sub, [*words, name])
        else:
            yield words, command

    return list(walk(typer.main.get_command(app), []))


def test_every_help_shows_its_defaults_and_flags_take_no_value(monkeypatch):
    """Each option whose default is a value (not None or off) shows "[default: ...]" in its own help
    line; a flag shows no `<bool>` placeholder (it takes no value). Rendered 300 columns wide, so
    each option's help is one line."""
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 300)
    commands = _commands()
    assert {" ".join(words) for words, _ in commands} >= {"build", "verify", "bench", "engine", "export", "train", "debug precision"}
    for words, command in commands:
        result = run_cli(*words, "--help")
        assert result.returncode == 0, result.stderr
        assert "<bool>" not in result.stdout, words
        lines = result.stdout.splitlines()
        for param in command.params:
            if param.param_type_name != "option" or param.hidden or param.name == "help":
                continue
            long_name = max(param.opts, key=len)
            line = next((text for text in lines if f" {long_name} " in text), None)
            assert line is not None, (words, long_name)
            shows_value = param.default not in (None, False) and not (param.is_flag and param.default is False)
            says_default = "[default:" in (param.help or "")  # a derived default written into the help ("the checkpoint's, else 224")
            if shows_value or says_default:
                assert "[default:" in line, (words, long_name, line)
