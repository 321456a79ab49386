"""The trainer's command line against hostile names, impossible settings, foreign checkpoints, a run folder
already in use, a bug, and a CUDA recipe on a CPU (issue 23, items 1, 5, 6, 7 and the trainer's settings).

Each case expects exit code 2 (1 for a bug) and exactly one `error:` line on stderr (no traceback), made
before any run folder exists; the settings cases hold whichever check catches them (the config builder's
ranges or the trainer's preflight), asserting on the line, not on who raises it.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import torch

from training import device as device_module
from training.run_lock import RunLock

from .small_version import build_small_version, copy_version, error_lines, train, train_argv


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_small_version(tmp_path_factory)


@pytest.fixture
def copy(small, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path / "runs"))     # the log of a command that fails early
    return copy_version(small, tmp_path)


def _refused(code: int, err: str, pattern: str) -> str:
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def _no_run_folder(copy) -> None:
    made = [p.name for p in copy.runs.glob("*") if p.name != "_logs"] if copy.runs.is_dir() else []
    assert not made, f"run folders made before the refusal: {made}"


# --- item 1: names that become paths ---

def _evil_values(tmp_path: Path) -> dict[str, str]:
    return {"climbs_out": "../../../../evil-" + uuid.uuid4().hex[:8] + "/x",
            "absolute": str(tmp_path.parent / f"abs-evil-{uuid.uuid4().hex[:8]}"),
            "empty": "", "nul_byte": "sym\x000.30"}


NAME_KINDS = {
    # kind: (how the value is given, regex of the refusal)
    "noise": (lambda v: {"noise": v}, r"noise variant .* is not a plain name"),
    "dataset": (lambda v: {"dataset": v}, r"dataset .* is not a plain name"),
    "version": (lambda v: {"extra": ["--set", f"version={v}"]}, r"version id .* is not a plain name"),
    "run_id": (lambda v: {"extra": ["--set", f"runtime.run_id={v}"]}, r"run id .* is not a plain name"),
    "method": (lambda v: {"method": v}, r"(unknown method|method .* is not a plain name)"),
}


@pytest.mark.parametrize("value_kind", ["climbs_out", "absolute", "empty", "nul_byte"])
@pytest.mark.parametrize("kind", sorted(NAME_KINDS))
def test_a_hostile_name_is_refused_and_nothing_is_written(kind, value_kind, copy, tmp_path, capsys):
    value = _evil_values(tmp_path)[value_kind]
    given, pattern = NAME_KINDS[kind]
    options = given(value)
    argv = train_argv(copy, *options.get("extra", []), method=options.get("method", "baseline"),
                      noise=options.get("noise", "clean"), dataset=options.get("dataset"))
    before = sorted(p for p in tmp_path.parent.iterdir())
    code, err = train(argv, capsys)
    _refused(code, err, pattern)
    _no_run_folder(copy)
    if value_kind == "climbs_out":      # where a run folder or variant named by it would land
        assert not (copy.runs / value).resolve().parent.exists()
    if value_kind == "absolute":
        assert not Path(value).exists()
    assert sorted(p for p in tmp_path.parent.iterdir()) == before, "something was written beside the test folder"


# --- impossible settings: refused before any work (no run folder, no version read) ---

SETTINGS = [
    ("negative_eval_batch_size", "data.eval_batch_size=-4", r"eval_batch_size"),
    ("log_every_zero", "runtime.log_every=0", r"log_every"),
    ("negative_lr", "optim.lr=-0.001", r"lr"),
    ("image_size_zero", "data.image_size=0", r"image_size"),
    ("groups_per_batch_zero", "data.groups_per_batch=0", r"groups_per_batch"),
    ("seed_2_pow_70", f"runtime.seed={2 ** 70}", r"seed"),
    ("negative_seed", "runtime.seed=-1", r"seed"),
    ("nan_lr", "optim.lr=.nan", r"lr"),
    ("image_size_above_the_stored_crop", "data.image_size=65", r"image_size 65 is larger than"),
]


@pytest.mark.parametrize("setting,pattern", [pytest.param(s, p, id=n) for n, s, p in SETTINGS])
def test_an_impossible_setting_fails_before_training(setting, pattern, copy, capsys):
    method = "ldl_alsg" if "groups" in setting else "baseline"
    code, err = train(train_argv(copy, "--set", setting, method=method), capsys)
    _refused(code, err, pattern)
    _no_run_folder(copy)


# --- item 6: one trainer per run folder; --resume of a foreign file ---

def test_a_second_trainer_on_a_held_run_folder_refuses_naming_the_holder(copy, capsys):
    held = RunLock(copy.runs / "shared-run")
    try:
        code, err = train(train_argv(copy, "--set", "runtime.run_id=shared-run"), capsys)
        _refused(code, err, rf"run folder .*shared-run is in use by another trainer \(pid {os.getpid()}\b")
        assert not (copy.runs / "shared-run" / "metrics.jsonl").exists()
    finally:
        held.release()
    code, err = train(train_argv(copy, "--set", "runtime.run_id=shared-run"), capsys)
    assert code == 0, err                              # free again: the same run id trains
    assert (copy.runs / "shared-run" / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("content,pattern", [
    ("state_dict", r"is not a checkpoint of this trainer \(it holds a plain state dict of \d+ entries\)"),
    ("text", r"cannot read checkpoint .*: it is not a file torch\.save wrote with plain tensors and values "
             r"\(UnpicklingError\)"),
    ("tensor", r"is not a checkpoint of this trainer \(it holds a Tensor\)"),
])
def test_resume_of_a_file_that_is_not_a_checkpoint_says_so(content, pattern, copy, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    if content == "state_dict":
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_text("not a checkpoint\n")
    code, err = train(train_argv(copy, "--resume", str(path)), capsys)
    _refused(code, err, pattern)
    _no_run_folder(copy)


# --- item 7: a bug ends in one line, its traceback in the log file ---

def test_a_bug_gives_one_error_line_and_the_traceback_in_the_log(copy, monkeypatch, capsys):
    import training.engine

    def fake_fit(config):          # a fake: stands for any bug deep in the engine
        raise RuntimeError("a fake bug for the catch-all\nsecond line")

    monkeypatch.setattr(training.engine, "fit", fake_fit)
    code, err = train(train_argv(copy), capsys)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    match = re.fullmatch(r"error: RuntimeError: a fake bug for the catch-all \(traceback in (.+\.log)\)", lines[0])
    assert match, lines[0]
    log_file = Path(match.group(1))
    assert log_file.parent == copy.runs / "_logs"
    text = log_file.read_text()
    assert "Traceback (most recent call last)" in text and "fake_fit" in text


# --- item 5: a CUDA recipe on a CPU whose step will not fit ---

def test_a_cuda_recipe_that_will_not_fit_is_refused_pointing_at_the_cpu_recipe(copy, monkeypatch, capsys):
    """The LDL-ALSG paper recipe (ResNet-50, 32 groups x 9 images) with only the crop size lowered to the
    small version's; the memory available is faked to 1 GB (this machine's would pass at 56 px)."""
    monkeypatch.setattr(device_module, "available_memory", lambda: (10 ** 9, "a fake 1 GB for this test"))
    argv = ["--dataset", copy.dataset, "--method", "ldl_alsg", "--noise", "clean",
            "--set", f"artifacts_root={copy.artifacts}", "--set", f"manifests_root={copy.manifests}",
            "--set", f"runtime.runs_root={copy.runs}", "--set", "data.image_size=56", "--set", "runtime.device=cpu",
            "--set", "data.num_workers=0", "--set", "runtime.progress=false"]
    code, err = train(argv, capsys)
    line = _refused(code, err, r"a training step of ldl_alsg needs about [\d.]+ GB \(288 images of 56 px through "
                               r"resnet50, \d+ MB each\) and this machine has 1\.0 GB available .*CUDA recipe; "
                               r"for the CPU recipe add --config training/configs/quickstart\.yaml")
    assert float(re.search(r"needs about ([\d.]+) GB", line).group(1)) > 1.0
    _no_run_folder(copy)


def test_the_step_estimate_of_the_paper_recipe_exceeds_what_killed_it():
    """ResNet-50 at 224 px, 288 images a step (the issue's kernel kill at 16.6 GB resident): the estimate,
    on the meta device (nothing is allocated), is above that."""
    from training.models import build_backbone

    class Predictor(torch.nn.Module):          # the prediction path of a single-backbone method
        def __init__(self):
            super().__init__()
            self.backbone, dim = build_backbone("resnet50")
            self.head = torch.nn.Linear(dim, 7)

        def predict(self, images):
            return self.head(self.backbone(images))                                  # [B, 7]

    need = device_module.step_memory(Predictor(), 288, 224, "sgd")
    assert need["total"] > 16.6e9, need
    assert 50e6 < need["per_image"] < 400e6, need
