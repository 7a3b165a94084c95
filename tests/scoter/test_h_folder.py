"""The H folder contract (scoter/h_folder.py): what the writer writes the readers read back, rows follow the
folder's user ids, and malformed folders fail with a message naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoter import h_folder


def _write(folder, ids, k=3, d=4, seed=0, present=None):
    rng = np.random.default_rng(seed)
    H = {s: rng.normal(size=(len(ids), k, d)).astype(np.float16) for s in h_folder.SPLITS}
    for s in h_folder.SPLITS:
        h_folder.write_split(folder, s, H[s], present)
    h_folder.write_user_ids(folder, ids)
    return H


def test_rows_follow_user_ids_and_missing_users_are_absent(tmp_path) -> None:
    H = _write(tmp_path, ["c", "a", "b"])
    arrays = h_folder.load_reasoning(tmp_path, ["a", "b", "c", "zz"])
    np.testing.assert_array_equal(arrays.H["test"][:3], H["test"][[1, 2, 0]].astype(np.float32))
    assert arrays.H["test"].dtype == np.float32 and not arrays.H["test"][3].any()
    assert arrays.present["valid"].tolist() == [True, True, True, False]
    assert (arrays.K, arrays.D) == (3, 4) and arrays.coverage()["train"] == 0.75


def test_save_then_load_round_trips_and_meta_records_the_shape(tmp_path) -> None:
    _write(tmp_path / "src", ["u1", "u2"], present=np.array([True, False]))
    arrays = h_folder.load_reasoning(tmp_path / "src", ["u1", "u2"], source="student")
    h_folder.save_reasoning(tmp_path / "dst", arrays, ["u1", "u2"])
    back = h_folder.load_reasoning(tmp_path / "dst", ["u1", "u2"])
    for s in h_folder.SPLITS:
        np.testing.assert_array_equal(back.H[s], arrays.H[s])
        np.testing.assert_array_equal(back.present[s], [True, False])
    assert json.loads((tmp_path / "dst" / "meta.json").read_text()) == {"source": "student", "K": 3, "D": 4}
    assert not list((tmp_path / "dst").glob(".*"))  # no temp files left behind


def test_published_split_needs_user_ids_of_the_right_length(tmp_path) -> None:
    _write(tmp_path, ["u1", "u2"])
    h, present, ids = h_folder.read_published_split(tmp_path, "test")
    assert h.shape == (2, 3, 4) and present.all() and ids == ["u1", "u2"]
    h_folder.write_user_ids(tmp_path, ["u1"])
    with pytest.raises(ValueError, match="H_test.npy has 2 rows, user_ids.json 1"):
        h_folder.read_published_split(tmp_path, "test")
    (tmp_path / "user_ids.json").unlink()
    with pytest.raises(FileNotFoundError, match="user_ids.json"):
        h_folder.read_published_split(tmp_path, "test")


def test_malformed_folders_are_refused_naming_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="H_train.npy"):
        h_folder.load_reasoning(tmp_path, ["u1"])
    with pytest.raises(ValueError, match=r"H_test: expected \[users, K, D\]"):
        h_folder.write_split(tmp_path, "test", np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"present_test: expected \[2\] flags"):
        h_folder.write_split(tmp_path, "test", np.zeros((2, 3, 4)), np.ones(3, bool))
    H = _write(tmp_path, ["u1", "u2"])
    bad = H["valid"].astype(np.float32)
    bad[1, 0, 0] = np.nan
    h_folder.write_split(tmp_path, "valid", bad)
    with pytest.raises(ValueError, match="H_valid.npy: non-finite H for 1 users"):
        h_folder.load_reasoning(tmp_path, ["u1", "u2"])
    h_folder.write_split(tmp_path, "valid", np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="H_valid.npy: K, D"):
        h_folder.load_reasoning(tmp_path, ["u1", "u2"])
