"""Config: typed defaults, YAML inheritance, overrides and every error path with its message."""
import textwrap

import pytest

from utils.config import ConfigError, config_from_yaml_text, get_cfg, load_config, parse_literal


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_scientific_notation_is_float_in_yaml_and_on_command_line(tmp_path):
    cfg_file = write(tmp_path / "a.yaml", "SOLVER:\n  BASE_LR: 5e-4\n  WEIGHT_DECAY: 1e-3\n")
    cfg = load_config(cfg_file, ["SOLVER.WARMUP_START_LR", "1e-6"])
    assert cfg.SOLVER.BASE_LR == pytest.approx(5e-4) and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(1e-3)
    assert cfg.SOLVER.WARMUP_START_LR == pytest.approx(1e-6)
    assert parse_literal("[1e-3, 2]") == [1e-3, 2]


def test_base_list_relative_to_including_file_child_wins(tmp_path):
    (tmp_path / "bases").mkdir()
    write(tmp_path / "bases" / "run.yaml", "TRAIN:\n  WAY: 7\n  SHOT: 2\nRANDOM_SEED: 1\n")
    write(tmp_path / "bases" / "model.yaml", "RANDOM_SEED: 2\nSOLVER:\n  BASE_LR: 0.1\n")
    child = write(tmp_path / "child.yaml", """\
        _BASE_: [bases/run.yaml, bases/model.yaml]
        TRAIN:
          SHOT: 3
        """)
    cfg = load_config(child)
    assert (cfg.TRAIN.WAY, cfg.TRAIN.SHOT, cfg.RANDOM_SEED, cfg.SOLVER.BASE_LR) == (7, 3, 2, 0.1)


def test_clipfsar_base_spellings_are_accepted(tmp_path):
    write(tmp_path / "run.yaml", "TRAIN:\n  WAY: 6\n")
    write(tmp_path / "model.yaml", "TRAIN:\n  SHOT: 4\n")
    write(tmp_path / "mid.yaml", "_BASE_RUN: run.yaml\n_BASE_MODEL: model.yaml\n")
    cfg = load_config(write(tmp_path / "top.yaml", "_BASE: mid.yaml\nRANDOM_SEED: 9\n"))
    assert (cfg.TRAIN.WAY, cfg.TRAIN.SHOT, cfg.RANDOM_SEED) == (6, 4, 9)


def test_unknown_key_names_file_and_closest_key(tmp_path):
    path = write(tmp_path / "typo.yaml", "TRAIN:\n  WAYS: 5\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key TRAIN\.WAYS \(did you mean TRAIN\.WAY\?\)"):
        load_config(path)


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LRR: 0.1\n")
    path = write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown config key SOLVER\.BASE_LRR .*SOLVER\.BASE_LR"):
        load_config(path)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = write(tmp_path / "bad.yaml", "TRAIN:\n  WAY: five\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: TRAIN\.WAY expects int .*'five'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"command line: TRAIN\.SHOT expects int"):
        load_config(None, ["TRAIN.SHOT", "1.5"])


def test_missing_base_file(tmp_path):
    path = write(tmp_path / "child.yaml", "_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: _BASE_ file not found: nowhere\.yaml"):
        load_config(path)


def test_base_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"_BASE_ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_command_line_overrides_are_typed_and_pairs_checked():
    cfg = load_config(None, ["TRAIN.WAY", "3", "OUTPUT_DIR", "2024", "SOLVER.BASE_LR", "1"])
    assert cfg.TRAIN.WAY == 3 and cfg.OUTPUT_DIR == "2024" and cfg.SOLVER.BASE_LR == 1.0
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["TRAIN.WAY"])
    with pytest.raises(ConfigError, match=r"command line: unknown config key TRAIN\.SHOTS \(did you mean TRAIN\.SHOT"):
        load_config(None, ["TRAIN.SHOTS", "1"])


def test_loaded_config_is_frozen_and_dump_reloads_equal():
    cfg = load_config(None, ["TRAIN.WAY", "4", "SOLVER.STEPS", "[0, 2]"])
    with pytest.raises(AttributeError):
        cfg.TRAIN.WAY = 6
    again = config_from_yaml_text(cfg.dump())
    assert again == cfg and again.dump() == cfg.dump()


def test_every_default_key_has_a_supported_type():
    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for key, value in leaves(get_cfg()):
        assert isinstance(value, (bool, int, float, str, list, tuple)), f"{key} has default {value!r}"


def test_yaml_is_read_with_safe_load_only(tmp_path):
    path = write(tmp_path / "evil.yaml", "OUTPUT_DIR: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: invalid YAML"):
        load_config(path)
