"""Bad inputs the engine meets: non-finite losses, test-only runs without or with mismatched weights.

Data-side cases (videos, split lists, track files) live in test_data_*.py, config cases in test_config.py,
checkpoint cases in test_checkpoint.py; docs/failures.md lists them all.
"""
import pytest
import torch
from tiny_run import TINY_CFG, refused, tiny_argv, tiny_opts

from runs.config import load_config
from runs.run import main
from runs.train_net_few_shot import Trainer
from utils.checkpoint import CheckpointError
from utils.config import ConfigError


class NaNOnIterations(torch.nn.Module):
    """Wraps a head; the loss of chosen iterations becomes NaN (as a diverging run would)."""

    def __init__(self, head, bad: set[int]):
        super().__init__()
        self.head, self.bad, self.calls = head, bad, 0

    def forward(self, episode, features=None):
        out = self.head(episode, features)
        if self.calls in self.bad:
            out["loss"] = out["loss"] * float("nan")
        self.calls += 1
        return out


def make_trainer(root, tmp_path, *opts):
    cfg = load_config(TINY_CFG, tiny_opts(root, tmp_path / "run", "TRAIN.BATCH_SIZE_PER_TASK", "1", *opts))
    return Trainer(cfg, torch.device("cpu"))


def first_episode(trainer):
    from datasets import build_dataset

    return build_dataset(trainer.cfg, "train", [0])[0]


def test_non_finite_loss_is_skipped_and_counted(synthetic_root, tmp_path):
    trainer = make_trainer(synthetic_root, tmp_path)
    trainer.ddp = NaNOnIterations(trainer.model, bad={1})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    episode = first_episode(trainer)
    trainer.run_step(episode)
    after_good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run_step(episode)  # NaN: no update, counted
    assert trainer.skipped_steps == 1 and trainer.bad_steps == 1
    assert any(not torch.equal(before[k], after_good[k]) for k in before)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, after_good[key]), f"{key} changed on a skipped step"
    trainer.run_step(episode)
    assert trainer.bad_steps == 0 and trainer.skipped_steps == 1


def test_too_many_consecutive_non_finite_losses_stop_with_a_clear_message(synthetic_root, tmp_path):
    trainer = make_trainer(synthetic_root, tmp_path, "TRAIN.MAX_BAD_STEPS", "3")
    trainer.ddp = NaNOnIterations(trainer.model, bad={0, 1, 2})
    episode = first_episode(trainer)
    trainer.run_step(episode)
    trainer.run_step(episode)
    with pytest.raises(FloatingPointError, match=r"3 consecutive non-finite losses .*TRAIN\.MAX_BAD_STEPS=3"):
        trainer.run_step(episode)


def test_test_only_run_needs_a_checkpoint(synthetic_root, tmp_path, capsys):
    line = refused(capsys, ConfigError.exit_code, tiny_argv(synthetic_root, tmp_path / "t", "TRAIN.ENABLE", "False"))
    assert line == ("error: TEST.CHECKPOINT_FILE_PATH: a test-only run (TRAIN.ENABLE False) needs the weights to "
                    "test (set TEST.CHECKPOINT_FILE_PATH)")
    assert not (tmp_path / "t").exists()


def test_checkpoint_from_another_config_gives_a_readable_key_diff(synthetic_root, tmp_path, capsys):
    trained = tmp_path / "trained"
    main(tiny_argv(synthetic_root, trained, "TRAIN.NUM_TRAIN_TASKS", "2", "TRAIN.VAL_FRE_ITER", "2",
                   "TRAIN.BATCH_SIZE_PER_TASK", "1", "TEST.ENABLE", "False", "TRAIN.TRANSFORMER_DEPTH", "2"))
    ckpt = str(trained / "checkpoints" / "last.pth")
    line = refused(capsys, CheckpointError.exit_code, tiny_argv(
        synthetic_root, tmp_path / "t", "TRAIN.ENABLE", "False", "TEST.CHECKPOINT_FILE_PATH", ckpt,
        "TRAIN.TRANSFORMER_DEPTH", "1"))
    assert line.startswith(f"error: {ckpt}: checkpoint does not match the model: ")
    assert "unexpected: temporal.1." in line


def test_wrong_type_on_the_command_line_names_the_key(synthetic_root, tmp_path, capsys):
    line = refused(capsys, ConfigError.exit_code,
                      tiny_argv(synthetic_root, tmp_path / "t", "TRAIN.NUM_TRAIN_TASKS", "many"))
    assert line.startswith("error: command line: TRAIN.NUM_TRAIN_TASKS expects int") and line.endswith("got 'many'")


def test_pretrained_weights_not_on_this_machine_are_one_line_naming_the_key(synthetic_root, tmp_path, capsys,
                                                                           monkeypatch):
    import huggingface_hub.constants

    line = refused(capsys, ConfigError.exit_code, tiny_argv(synthetic_root, tmp_path / "t", "VIDEO.HEAD.PRETRAINED",
                                                            str(tmp_path / "RN50.pt")))
    assert line == (f"error: VIDEO.HEAD.PRETRAINED '{tmp_path / 'RN50.pt'}': no such file (give a local checkpoint "
                    f"such as OpenAI's RN50.pt or ViT-B-16.pt, 'openai' to download, or '' for random weights)")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # nothing cached
    line = refused(capsys, ConfigError.exit_code, tiny_argv(synthetic_root, tmp_path / "t", "VIDEO.HEAD.PRETRAINED",
                                                            "openai", "VIDEO.HEAD.BACKBONE_NAME", "RN50"))
    assert line.startswith("error: VIDEO.HEAD.PRETRAINED openai: OpenAI's RN50 weights are not cached here and could "
                           "not be downloaded (")  # conftest: HF_HUB_OFFLINE=1
    assert line.endswith("(offline: copy OpenAI's RN50.pt here and set VIDEO.HEAD.PRETRAINED to its path)")
    line = refused(capsys, ConfigError.exit_code, tiny_argv(synthetic_root, tmp_path / "t", "VIDEO.HEAD.PRETRAINED",
                                                            "openai"))
    assert "OpenAI released no weights for VIDEO.HEAD.BACKBONE_NAME FSAR-Tiny-ViT" in line
    assert not (tmp_path / "t").exists()  # refused before the run folder


def test_a_missing_track_folder_with_vfam_on_is_one_line_before_training(synthetic_root, tmp_path, capsys):
    line = refused(capsys, ConfigError.exit_code, tiny_argv(
        synthetic_root, tmp_path / "t", "VFAM.ENABLE", "True", "DATA.TRACK_DIR", str(synthetic_root / "trakcs")))
    assert line == (f"error: DATA.TRACK_DIR {synthetic_root / 'trakcs'}: no such folder, and VFAM.ENABLE needs its "
                    f"track files (check the path, write them with runs/extract_tracks.py, or set VFAM.ENABLE False)")
    assert not (tmp_path / "t").exists()


def test_a_checkpoint_with_integer_or_non_finite_weights_is_refused_for_test_and_resume(synthetic_root, tmp_path,
                                                                                       capsys):
    """An int32 copy of the weights used to load (cast back) and test; an all-NaN one tested at 20 % silently."""
    run = tmp_path / "run"
    main(tiny_argv(synthetic_root, run, "TRAIN.NUM_TRAIN_TASKS", "2", "TRAIN.VAL_FRE_ITER", "2",
                   "TRAIN.BATCH_SIZE_PER_TASK", "1", "TEST.ENABLE", "False"))
    last = run / "checkpoints" / "last.pth"
    state = torch.load(last, weights_only=True)
    first = next(iter(state["model"]))
    as_int, as_nan = tmp_path / "int32.pth", tmp_path / "nan.pth"
    for path, spoil in ((as_int, lambda t: t.to(torch.int32)), (as_nan, lambda t: torch.full_like(t, torch.nan))):
        torch.save({**state, "model": {k: spoil(v) for k, v in state["model"].items()}}, path)
    line = refused(capsys, CheckpointError.exit_code, tiny_argv(
        synthetic_root, tmp_path / "t", "TRAIN.ENABLE", "False", "TEST.CHECKPOINT_FILE_PATH", str(as_int)))
    assert line == (f"error: {as_int}: {first} is stored as int32, the model's is float32 (the weights were "
                    f"converted after saving; use the file as training wrote it)")

    as_nan.replace(last)  # a resume reads the same weights through the same door
    before = last.read_bytes()
    line = refused(capsys, CheckpointError.exit_code, ["--resume", *tiny_argv(
        synthetic_root, run, "TRAIN.NUM_TRAIN_TASKS", "2", "TRAIN.VAL_FRE_ITER", "2", "TRAIN.BATCH_SIZE_PER_TASK", "1",
        "TEST.ENABLE", "False")])
    assert line == (f"error: {last}: {first} holds NaN or inf (the run had diverged when this was saved; use an "
                    f"earlier checkpoint)")
    assert last.read_bytes() == before


def test_a_huge_num_train_tasks_trains_on_lazy_episode_indices(synthetic_root, tmp_path):
    """TRAIN.NUM_TRAIN_TASKS 10**12 used to build every episode index as one list before iteration 1 (MemoryError);
    the indices are a range now: training starts at once, and SIGTERM stops it as usual. The run has 8 GiB of address
    space, so the old behaviour fails within seconds instead of taking the machine's memory."""
    import os
    import resource
    import signal

    from test_preemption import error_line, run_py, wait_for_training

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    out = tmp_path / "huge"
    argv = tiny_argv(synthetic_root, out, "TRAIN.NUM_TRAIN_TASKS", str(10**12), "TEST.ENABLE", "False")
    proc = run_py(argv, preexec_fn=limit_memory)
    wait_for_training(out, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    code, line = error_line(proc)
    assert code == 10 and line.startswith(f"error: {out}/checkpoints/last.pth: training stopped by SIGTERM at "
                                          f"iteration ") and f"of {10**12};" in line, line
