"""Config: typed defaults, YAML inheritance, overrides and every error path with its message."""
import textwrap

import pytest

from runs.config import config_from_yaml_text, get_cfg, load_config
from utils.config import ConfigError, parse_literal


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
    with pytest.raises(ConfigError, match=r"evil\.yaml:1:\d+: invalid YAML"):
        load_config(path)


# --- hostile inputs (issue 17) ------------------------------------------------------------------------------------


def test_every_rule_names_a_declared_key_and_accepts_its_default():
    from utils.config import _RULES, all_keys

    cfg = get_cfg()
    keys = set(all_keys(cfg))
    assert set(_RULES) <= keys, f"rules for undeclared keys: {sorted(set(_RULES) - keys)}"
    for key, rule in _RULES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        assert rule.ok(value), f"default of {key} ({value!r}) breaks its own rule ({rule.text})"


@pytest.mark.parametrize("key,value,message", [
    ("SOLVER.BASE_LR", "nan", r"SOLVER\.BASE_LR must be a finite number, got nan"),
    ("SOLVER.BASE_LR", "inf", r"SOLVER\.BASE_LR must be a finite number, got inf"),
    ("SOLVER.BASE_LR", "-1", r"SOLVER\.BASE_LR must be > 0, got -1\.0"),
    ("TRAIN.NUM_TRAIN_TASKS", "-5", r"TRAIN\.NUM_TRAIN_TASKS must be >= 0, got -5"),
    ("TRAIN.WAY", "0", r"TRAIN\.WAY must be > 0, got 0"),
    ("TRAIN.VAL_FRE_ITER", "0", r"TRAIN\.VAL_FRE_ITER must be > 0, got 0"),
    ("DATA.MEAN", "[0.5, 0.5]", r"DATA\.MEAN must be a list of 3 values"),
    ("OUTPUT_DIR", "''", r"OUTPUT_DIR must be a non-empty folder path"),
])
def test_range_checks_refuse_out_of_range_values(key, value, message):
    with pytest.raises(ConfigError, match=r"^command line: " + message):
        load_config(None, [key, value])


def test_range_checks_name_the_file_in_yaml(tmp_path):
    path = write(tmp_path / "lr.yaml", "SOLVER:\n  BASE_LR: .nan\n")
    with pytest.raises(ConfigError, match=r"lr\.yaml: SOLVER\.BASE_LR must be a finite number"):
        load_config(path)


def test_a_flag_where_a_value_belongs_is_refused():
    with pytest.raises(ConfigError, match=r"^command line: OUTPUT_DIR has no value \('--resume' is a flag\)"):
        load_config(None, ["OUTPUT_DIR", "--resume"])


@pytest.mark.parametrize("text,line,first", [
    ("TRAIN:\n  WAY: 5\nTRAIN:\n  SHOT: 1\n", 3, 1),
    ("TRAIN:\n  WAY: 5\n  SHOT: 1\n  WAY: 3\n", 4, 2),
])
def test_duplicate_yaml_keys_are_refused_with_file_and_line(tmp_path, text, line, first):
    path = write(tmp_path / "dup.yaml", text)
    with pytest.raises(ConfigError, match=rf"dup\.yaml:{line}: duplicate key '\w+' \(first on line {first}"):
        load_config(path)


def test_paths_expand_home_in_yaml_and_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(write(tmp_path / "p.yaml", "OUTPUT_DIR: ~/runs/x\n"), ["DATA.ANNO_DIR", "~/splits"])
    assert cfg.OUTPUT_DIR == str(tmp_path / "runs" / "x")
    assert cfg.DATA.ANNO_DIR == str(tmp_path / "splits")


@pytest.mark.parametrize("content,message", [
    ("TRAIN:\n  WAY: 5\n".encode("utf-16"), r"u16\.yaml: config file is UTF-16-encoded \(save it as UTF-8\)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", r"u16\.yaml: config file is binary, not text \(NUL byte at offset 8\)"),
    (b"TRAIN:\n  WAY: \xff\n", r"u16\.yaml: config file is not valid UTF-8 \(byte 14"),
])
def test_non_utf8_config_files_are_named(tmp_path, content, message):
    path = tmp_path / "u16.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_utf8_bom_in_a_config_is_stripped(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfTRAIN:\n  WAY: 3\n")
    assert load_config(str(path)).TRAIN.WAY == 3


def test_config_errors_for_directories_sections_syntax_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not a config file"):
        load_config(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^command line: TRAIN is a section \(.*\), got a value '5'; set one of its "
                                          r"keys, e\.g\. TRAIN\."):
        load_config(None, ["TRAIN", "5"])
    write(tmp_path / "broken.yaml", "TRAIN:\n  WAY: [1, 2\n")
    child = write(tmp_path / "child.yaml", "_BASE_: broken.yaml\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+:\d+: invalid YAML"):
        load_config(child)
    with pytest.raises(ConfigError, match=r"empty\.yaml: config file is empty"):
        load_config(write(tmp_path / "empty.yaml", "\n"))


def test_a_key_in_the_wrong_section_suggests_its_full_name(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key WAY \(did you mean TRAIN\.WAY\?\)"):
        load_config(write(tmp_path / "top.yaml", "WAY: 5\n"))


def test_a_seed_beyond_64_bits_is_one_config_error_before_the_run_folder_is_made(synthetic_root, tmp_path, capsys):
    """RANDOM_SEED 10**30 used to fail in torch.manual_seed after config.yaml was written (the retry then exit 9)."""
    from tiny_run import refused, tiny_argv

    out = tmp_path / "run"
    line = refused(capsys, 3, tiny_argv(synthetic_root, out, "RANDOM_SEED", str(10**30)))
    assert line == f"error: command line: RANDOM_SEED must be in [0, 2**63), got {10**30}"
    assert not out.exists()


def test_yaml_aliases_are_refused_before_they_are_expanded(tmp_path):
    """A billion-laughs file under an unknown key used to expand for a minute and gigabytes before any key check."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"{chr(98 + k)}: &{chr(98 + k)} [" + ", ".join([f"*{chr(97 + k)}"] * 10) + "]" for k in range(8)]
    bomb = write(tmp_path / "bomb.yaml", "UNKNOWN:\n" + "".join(f"  {line}\n" for line in levels))
    with pytest.raises(ConfigError) as err:
        load_config(bomb)
    assert str(err.value) == (f"{bomb}:3:10: invalid YAML (YAML alias *a: config files do not use anchors and "
                              f"aliases; write the value out, or share settings between files with _BASE_)")
    with pytest.raises(ConfigError, match=r"command line: TRAIN.WAY: cannot parse .*YAML alias \*a"):
        load_config(None, ["TRAIN.WAY", "[&a 1, *a]"])


def test_an_unquoted_list_on_the_command_line_suggests_quoting():
    """`DATA.TRAIN_JITTER_SCALES [72, 80]` reaches us as two words; the second used to be called a key without a
    value."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["DATA.TRAIN_JITTER_SCALES", "[72,", "80]"])
    assert str(err.value) == ("command line: DATA.TRAIN_JITTER_SCALES: cannot parse '[72,' (the shell split a list "
                              "at its spaces: quote it, DATA.TRAIN_JITTER_SCALES '[72, 80]', or write it without "
                              "spaces, [72,80])")


def test_a_yaml_merge_key_then_an_explicit_key_is_not_a_duplicate(tmp_path):
    """YAML defines `<<: {WAY: 5}` then `WAY: 3` as WAY 3 (the explicit key overrides the merged one)."""
    cfg_file = write(tmp_path / "merge.yaml", "TRAIN:\n  <<: {WAY: 5, SHOT: 2}\n  WAY: 3\n")
    cfg = load_config(cfg_file)
    assert (cfg.TRAIN.WAY, cfg.TRAIN.SHOT) == (3, 2)
    twice = write(tmp_path / "twice.yaml", "TRAIN:\n  <<: {WAY: 5}\n  WAY: 3\n  WAY: 4\n")
    with pytest.raises(ConfigError, match=r"twice.yaml:4: duplicate key 'WAY' \(first on line 3"):
        load_config(twice)


@pytest.mark.parametrize("unknown, hint", [
    ("TRAIN.WAYS", "TRAIN.WAY"), ("TRAIN.SHOTS", "TRAIN.SHOT"), ("SOLVER.BASELR", "SOLVER.BASE_LR"),
    ("SOLVER.WARMUP_EPOCH", "SOLVER.WARMUP_EPOCHS"), ("DATA.DATA_ROOT", "DATA.DATA_ROOT_DIR"),
    ("DATA.NUM_FRAMES", "DATA.NUM_INPUT_FRAMES"), ("DATA.MIN_FRAMES", "DATA.MIN_VIDEO_FRAMES"),
    ("VIDEO.HEAD.BACKBONE", "VIDEO.HEAD.BACKBONE_NAME"), ("SOVLER.BASE_LR", "SOLVER.BASE_LR"),
    ("WAY", "TRAIN.WAY"), ("DATA_LOADER.NUM_WORKERS", "DATA.NUM_WORKERS"),
    # another key, not a typo of one: no hint (CLIP-FSAR's keys used to get these)
    ("TEST.TEST_SET", None), ("TRAIN.BATCH_SIZE", None), ("TEST.BATCH_SIZE", None), ("DATA.SAMPLING_MODE", None),
    ("DATA.FPS", None), ("PRETRAIN.ENABLE", None), ("TRAIN.EVAL_PERIOD", None), ("TRAIN.DATASET", None),
    ("MODEL.NAME", None), ("OPTIMIZER.WEIGHT_DECAY", None),
])
def test_unknown_keys_get_a_hint_only_when_it_is_close(unknown, hint):
    with pytest.raises(ConfigError) as info:
        load_config(None, [unknown, "1"])
    expected = f"command line: unknown config key {unknown}" + (f" (did you mean {hint}?)" if hint else "")
    assert str(info.value) == expected


def test_every_unknown_key_of_a_file_is_named_in_one_error(tmp_path):
    path = write(tmp_path / "many.yaml", "TRAIN:\n  WAYS: 5\n  SHOT: 2\n  DATASET: x\nFOO:\n  BAR: 1\n  BAZ: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: unknown config keys TRAIN.WAYS (did you mean TRAIN.WAY?), TRAIN.DATASET, "
                               f"FOO.BAR, FOO.BAZ")
    with pytest.raises(ConfigError, match=r"^command line: unknown config keys TRAIN\.SHOTS \(did you mean "
                                          r"TRAIN\.SHOT\?\), TEST\.TEST_SET$"):
        load_config(None, ["TRAIN.SHOTS", "1", "TEST.TEST_SET", "val"])
