import json
import os
import sys
from pathlib import Path

# Under pytest-xdist (`-n`), the workers share the machine's cores: torch on one thread in each
# (it reads this once, on import), else every worker's torch/OpenMP pool spins on every core.
# The issue-11 test set on 2 cores: -n 2 with torch on one thread 253 s against 371 s serial (one
# day); -n 2 with the default threads 516 s against 384 s serial (another day).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from reference import authors_state_dict  # noqa: E402

# A pytest-xdist worker's peak memory over the suite (two workers peaked at ~12 GB in all, on 2 cores).
WORKER_MEMORY_BYTES = 6 * 2**30


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, at most 4, and no more than the available memory holds."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    from dropcov_deploy.memory import available_memory_bytes

    available = available_memory_bytes()  # None where it cannot be read: the cores decide
    by_memory = max(1, available // WORKER_MEMORY_BYTES) if available else cores
    return max(1, min(cores, 4, by_memory))


@pytest.fixture(scope="session", autouse=True)
def run_cache(tmp_path_factory):
    """Every cache the library keeps (calibration, the models table, the machine's GEMM rate) in this
    run's folder, shared by its workers: the tests never read or write the user's own cache, and a
    figure measured while another worker holds a core never reaches a real `bench`."""
    folder = _run_folder(tmp_path_factory) / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DROPCOV_CACHE", str(folder))
        yield folder


# Fixtures that train a model: a test using one (directly or through another fixture) is slow.
TRAINING_FIXTURES = {"trained_digits", "trained_vit", "demo_run"}


def pytest_collection_modifyitems(config, items):
    """`-m "not slow"` must really leave out everything that trains: refuse an unmarked test that would."""
    unmarked = [f"{item.nodeid} (uses {', '.join(sorted(TRAINING_FIXTURES & set(item.fixturenames)))})"
                for item in items if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests train a model but are not marked slow:\n  " + "\n  ".join(unmarked))


@pytest.fixture
def authors_checkpoint(tmp_path):
    """Factory: write a checkpoint as the authors' main.py saves it (DataParallel keys)."""

    def make(arch="resnet18_ACD", dim=16, num_classes=10, seed=0, name="model_best.pth.tar"):
        state = authors_state_dict(arch, dim, num_classes, seed)
        path = tmp_path / name
        torch.save(
            {
                "epoch": 90,
                "arch": arch,
                "state_dict": {f"module.{k}": v for k, v in state.items()},
                "best_acc1": torch.tensor(75.2),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
            },
            path,
        )
        return path, state

    return make


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`dropcov-deploy demo` run once (train 10 epochs on digits, export, build, verify, bench, report):
    the demo test reads what it wrote, and `trained_digits` reuses its trained model (one training
    run for both, the same TrainConfig)."""
    from cli_helpers import run_cli

    return _once_for_all_workers(tmp_path_factory, "demo", lambda out: run_cli("demo", "--out", out))


def _run_folder(tmp_path_factory) -> Path:
    """This run's temporary folder, the same for every pytest-xdist worker of the run (each
    worker's basetemp is a folder in it); the basetemp itself in a serial run."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.getbasetemp()
    # the run's id as well: a worker with no basetemp of the controller's would share the parent with other runs
    folder = tmp_path_factory.getbasetemp().parent / f"run-{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'xdist')}"
    folder.mkdir(exist_ok=True)
    return folder


def _once_for_all_workers(tmp_path_factory, name: str, run):
    """`run(folder / name)` once per run (serial, or pytest-xdist's), by whichever worker asks
    first; the others wait for it and read its folder and result (the xdist documentation's recipe
    for a session fixture that must run once: the demo trains for a minute). A run that raised (a timeout, an
    interrupt) is recorded as such, so the other workers fail at once instead of training again."""
    import shutil

    from cli_helpers import CliResult
    from filelock import FileLock

    from dropcov_deploy.atomic import atomic_write

    shared = _run_folder(tmp_path_factory) / name
    out, record = shared / name, shared / "result.json"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared / "lock")):
        if not record.exists():
            shutil.rmtree(out, ignore_errors=True)
            try:
                result = run(out)
                fields = {"args": [str(a) for a in result.args], "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
            except BaseException as exc:
                fields = {"raised": f"{type(exc).__name__}: {exc}"}
                raise
            finally:
                atomic_write(record, lambda tmp: tmp.write_text(json.dumps(fields)))
        fields = json.loads(record.read_text())
    if "raised" in fields:
        pytest.fail(f"{name}: another worker's run raised {fields['raised']}", pytrace=False)
    return out, CliResult(**fields)


@pytest.fixture(scope="session")
def trained_digits(demo_run, tmp_path_factory):
    """A real trained compact model (digits, 10 epochs: the demo's) and its FP32 export, copied
    out of the demo's folder so no test can change what the demo test reads.

    Shared by the build, verify and bench tests: random weights would make top-1 agreement
    and accuracy meaningless.
    """
    import shutil

    from dropcov_deploy.models import load_checkpoint_with_info

    demo, _ = demo_run
    folder = tmp_path_factory.mktemp("trained")
    for name in ("model.pt", "model.onnx", "model.onnx.json"):
        assert (demo / name).exists(), f"the demo wrote no {name}"
        shutil.copyfile(demo / name, folder / name)
    assert load_checkpoint_with_info(folder / "model.pt").info.accuracy >= 0.95
    return folder / "model.pt", folder / "model.onnx"


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def calibration_dir():
    """The bundled digits calibration/held-out folder (300 images, 30 per class)."""
    folder = REPO / "calibration" / "digits"
    assert folder.is_dir(), f"{folder}: missing (the repository ships it)"
    return folder


@pytest.fixture(scope="session")
def models_json():
    """`dropcov-deploy models --json`, parsed, run once for every test that reads it."""
    from cli_helpers import run_cli

    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def seeded_digits(tmp_path_factory):
    """An untrained, seeded compact digits model (our checkpoint format) and its FP32 export: a
    few seconds, for tests of formats, options and errors that need no trained weights."""
    from dropcov_deploy.data.digits import PREPROCESSING
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.models import create_model, save_checkpoint

    folder = tmp_path_factory.mktemp("seeded")
    arch = "resnet10_compact_ACD"
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    checkpoint = save_checkpoint(folder / "model.pt", model, arch=arch, input_size=32, preprocessing=PREPROCESSING,
                                 class_names=[str(i) for i in range(10)])
    return checkpoint, export_onnx(checkpoint, folder / "model.onnx").path


@pytest.fixture(scope="session")
def seeded_chain(seeded_digits, calibration_dir, tmp_path_factory):
    """`seeded_digits` with a CPU INT8 build (16 calibration images), keyed like test_verify_bench's `chain`."""
    from dropcov_deploy.build import BuildOptions, build

    checkpoint, fp32 = seeded_digits
    folder = fp32.parent
    options = BuildOptions(precision="int8", calib=calibration_dir, calib_size=16, cache_dir=folder / "cache", out=folder / "model.int8.cpu.onnx")
    return {"checkpoint": checkpoint, "fp32": fp32, "int8": build(fp32, options).precision_onnx, "folder": folder}
