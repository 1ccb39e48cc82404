"""Finding training and test clips in the layouts people actually have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_monitor.core.errors import UserError
from edge_monitor.core.features import FeatureParams, log_mel
from edge_monitor.core.model import sha256_file
from edge_monitor.core.wav import write_wav
from training.data import FeatureCache, find_test_clips, find_training_clips, parse_name


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_wav(folder / name, np.zeros(2048, np.float32), 16000)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("normal_id_02_00000001.wav", ("id_02", 0)),
        ("anomaly_id_04_00000123.wav", ("id_04", 1)),
        ("section_01_source_train_normal_0003_strength_1_ambient.wav", ("section_01", 0)),
        ("section_00_target_test_anomaly_0042_vel_8.wav", ("section_00", 1)),
        ("section_03_test_anomaly_0001.wav", ("section_03", 1)),
        ("00000007.wav", (None, None)),
    ],
)
def test_parse_name(name, expected):
    assert parse_name(Path("x") / name) == expected


def test_dcase2020_root_groups_by_type_and_id(tmp_path):
    touch(tmp_path / "fan" / "train", "normal_id_00_00000000.wav", "normal_id_02_00000000.wav")
    touch(tmp_path / "pump" / "train", "normal_id_00_00000000.wav")
    touch(tmp_path / "fan" / "test", "anomaly_id_00_00000000.wav")
    groups = find_training_clips(tmp_path)
    assert sorted(groups) == ["fan-id_00", "fan-id_02", "pump-id_00"]
    assert list(find_training_clips(tmp_path, "fan", "id_02")) == ["fan-id_02"]
    assert list(find_training_clips(tmp_path / "pump")) == ["pump-id_00"]


def test_dcase2021_naming(tmp_path):
    touch(tmp_path / "gearbox" / "train", "section_00_source_train_normal_0000_a.wav",
          "section_01_target_train_normal_0000_b.wav")
    assert sorted(find_training_clips(tmp_path)) == ["gearbox-section_00", "gearbox-section_01"]


def test_plain_folder_and_mimii_layout(tmp_path):
    touch(tmp_path / "press" , "a.wav", "b.wav")
    assert list(find_training_clips(tmp_path / "press")) == ["press-default"]
    assert list(find_training_clips(tmp_path / "press", "press", "id_07")) == ["press-id_07"]
    touch(tmp_path / "mimii" / "normal", "0.wav")
    touch(tmp_path / "mimii" / "abnormal", "1.wav")
    groups = find_training_clips(tmp_path / "mimii", machine="fan", machine_id="id_00")
    assert [c.path.name for c in groups["fan-id_00"]] == ["0.wav"]
    tests = find_test_clips(tmp_path / "mimii", "fan")
    assert sorted((c.path.name, c.label) for c in tests) == [("0.wav", 0), ("1.wav", 1)]


def test_nothing_to_train_on_says_what_was_found(tmp_path):
    touch(tmp_path / "fan" / "train", "normal_id_00_00000000.wav")
    with pytest.raises(UserError, match="found fan-id_00"):
        find_training_clips(tmp_path, machine="pump")
    with pytest.raises(UserError, match="no such folder"):
        find_training_clips(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no labelled test WAVs"):
        find_test_clips(tmp_path / "empty")


def test_feature_cache_hits_and_matches(tmp_path):
    x = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    write_wav(tmp_path / "a.wav", x, 16000)
    cache = FeatureCache(tmp_path / "cache", FeatureParams())
    digest = sha256_file(tmp_path / "a.wav")
    first = cache.frames(tmp_path / "a.wav", digest)
    second = cache.frames(tmp_path / "a.wav", digest)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, second)
    from edge_monitor.core.wav import load_audio

    np.testing.assert_array_equal(first, log_mel(load_audio(tmp_path / "a.wav", 16000)))
    other = FeatureCache(tmp_path / "cache", FeatureParams(n_mels=64))  # other parameters, other entries
    assert other.frames(tmp_path / "a.wav", digest).shape[1] == 64 and other.misses == 1


@pytest.mark.parametrize("requested", ["00", "0", "id_00", "id_0", "ID_00"])
def test_machine_id_spellings_name_the_same_machine(tmp_path, requested):
    """Defect 3 of issue 9: `train DCASE_ROOT --machine slider --id 00` found nothing but "slider-id_00"."""
    touch(tmp_path / "slider" / "train", "normal_id_00_00000000.wav", "normal_id_02_00000000.wav")
    touch(tmp_path / "fan" / "train", "normal_id_00_00000000.wav")
    assert list(find_training_clips(tmp_path, "slider", requested)) == ["slider-id_00"]


def test_machine_id_spellings_do_not_match_other_ids(tmp_path):
    touch(tmp_path / "slider" / "train", "normal_id_00_00000000.wav", "normal_id_02_00000000.wav")
    touch(tmp_path / "gearbox" / "train", "section_01_source_train_normal_0000_a.wav")
    assert list(find_training_clips(tmp_path, "slider", "2")) == ["slider-id_02"]
    assert list(find_training_clips(tmp_path, "gearbox", "01")) == ["gearbox-section_01"]
    for wrong in ("000001", "section_00", "id_1", "x00"):
        with pytest.raises(UserError, match="found .*slider-id_00"):
            find_training_clips(tmp_path, "slider", wrong)
