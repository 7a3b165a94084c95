"""Data pipeline: loaders on good and malformed files, iterative k-core, and the leave-one-out split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.data.datasets import DataConfig, LeaveOneOut, k_core_filter, load_benchmark, load_interactions
from scoter.cli import main
from scoter.paths import data_root


def write_benchmark(root: Path, name: str, lines: list[str], items: list[dict] | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n")
    if items is not None:
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


def item_rec(i: int, **kw) -> dict:
    return {
        "item_id": i,
        "source_id": f"A{i}",
        "title": f"Item {i}",
        "brand": None,
        "categories": ["C"],
        **kw,
    }


# ------------------------------------------------------------------------------------------- benchmark


def test_benchmark_loader_reads_sequences_and_items(tmp_path: Path) -> None:
    items = [item_rec(1, brand="Acme", categories=["Makeup", "Nails"]), item_rec(2), item_rec(3), item_rec(5)]
    write_benchmark(tmp_path, "toy", ["u1 1 2 3", "u2 5 3 2 1"], items)
    ds = load_benchmark("toy", tmp_path)
    assert ds.user_ids == ["u1", "u2"]
    assert ds.n_items == 4  # ids 1,2,3,5 -> dense indices 1..4
    assert [s.tolist() for s in ds.sequences] == [[1, 2, 3], [4, 3, 2, 1]]
    assert ds.external_ids() == ["1", "2", "3", "5"]
    assert ds.items[0].source_id == "A1"
    assert ds.item_text(1) == "Item 1. Brand: Acme. Categories: Makeup > Nails"
    assert ds.stats()["interactions"] == 7
    with pytest.raises(ValueError, match="out of range"):
        ds.item_text(5)


def test_checksum_follows_file_content(tmp_path: Path) -> None:
    write_benchmark(tmp_path, "a", ["u1 1 2 3"])
    write_benchmark(tmp_path, "b", ["u1 1 2 3"])
    write_benchmark(tmp_path, "c", ["u1 1 3 2"])
    a, b, c = (load_benchmark(n, tmp_path).checksum for n in "abc")
    assert a == b != c


def test_benchmark_without_items_file(tmp_path: Path) -> None:
    write_benchmark(tmp_path, "inst", ["u1 1 2 3"])
    ds = load_benchmark("inst", tmp_path)
    assert ds.items[2].item_id == "3" and ds.items[2].title == ""
    assert ds.item_text(3) == "item 3"


@pytest.mark.parametrize(
    ("lines", "items", "match"),
    [
        (["u1 1 2 3", "u2 1 x 3"], None, r"sequences.txt:2: field item_id \(position 2\): 'x'"),
        (["u1 1 2 3", "u1 1 2"], None, r"sequences.txt:2: field user_id: duplicate"),
        (["u1 1 0 3"], None, r"sequences.txt:1: field item_id .* must be >= 1"),
        (["u1"], None, r"sequences.txt:1: field item_id: user 'u1' has no items"),
        (["u1 1 2 3"], "bad", r"items.jsonl:2: invalid JSON"),
        (["u1 1 2 3"], "noid", r"items.jsonl:2: field item_id: missing"),
        (["u1 1 2 4"], "ok", r"item 4 is missing from"),
    ],
)
def test_benchmark_malformed_input_names_file_line_field(tmp_path: Path, lines, items, match) -> None:
    folder = write_benchmark(tmp_path, "bad", lines)
    if items is not None:
        good = json.dumps(item_rec(1)) + "\n"
        second = {"bad": "{not json\n", "noid": json.dumps({"title": "x"}) + "\n"}.get(items, "")
        rest = "".join(json.dumps(item_rec(i)) + "\n" for i in (2, 3))
        (folder / "items.jsonl").write_text(good + second + rest)
    with pytest.raises(ValueError, match=match):
        load_benchmark("bad", tmp_path)


def test_missing_benchmark_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_benchmark("nope", tmp_path)


# ---------------------------------------------------------------------------------------- interactions


def test_k_core_is_iterative() -> None:
    # k=2: item c (1 interaction) goes; then user v has 1 left and goes; then item b has 1 left and goes; then
    # user w has 1 left and goes; then item d has 1 left and goes. A single pass would only drop c.
    users = np.array(["u", "u", "v", "v", "w", "w", "u"])
    items = np.array(["a", "a", "b", "c", "b", "d", "d"])
    keep = k_core_filter(users, items, 2)
    assert keep.tolist() == [True, True, False, False, False, False, False]
    assert k_core_filter(users, items, 1).all()


def test_interactions_csv_sorted_by_time_and_k_core(tmp_path: Path) -> None:
    rows = [
        ("alice", "i1", "2024-01-03"),
        ("alice", "i2", "2024-01-01"),
        ("alice", "i3", "2024-01-02"),
        ("bob", "i3", "2024-02-01"),
        ("bob", "i1", "2024-01-01"),
        ("bob", "i2", "2024-03-01"),
        ("carol", "i9", "2024-01-01"),  # i9 and carol fall to the 2-core filter
    ]
    path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["uid", "sku", "ts"]).to_csv(path, index=False)
    items = tmp_path / "items.csv"
    pd.DataFrame(
        {"sku": ["i1", "i2", "i3"], "title": ["One", "Two", "Three"], "categories": ["A|B", "", "C"]}
    ).to_csv(items, index=False)
    ds = load_interactions(path, items, k_core=2, user_col="uid", item_col="sku", time_col="ts")
    assert ds.user_ids == ["alice", "bob"]
    assert ds.external_ids() == ["i1", "i2", "i3"]
    assert [s.tolist() for s in ds.sequences] == [[2, 3, 1], [1, 3, 2]]
    assert ds.items[0].categories == ["A", "B"] and ds.items[1].categories == []
    assert ds.item_text(3) == "Three. Categories: C"


def test_interactions_parquet_numeric_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {"user": [1, 1, 1, 2, 2, 2], "item": [7, 8, 9, 9, 8, 7], "timestamp": [3, 2, 1, 1, 2, 3]}
    ).to_parquet(path)
    cfg = DataConfig(interactions_path=path, k_core=0)
    ds = cfg.load()
    assert [s.tolist() for s in ds.sequences] == [[3, 2, 1], [3, 2, 1]]


@pytest.mark.parametrize(
    ("csv", "match"),
    [
        ("user,item\nu,i\n", r"events.csv: field 'timestamp': column missing"),
        ("user,item,timestamp\nu,i,1\nu,,2\n", r"events.csv:3: field 'item': empty value"),
        (
            "user,item,timestamp\nu,i,1\nu,j,yesterday-ish\n",
            r"events.csv:3: field 'timestamp': 'yesterday-ish'",
        ),
    ],
)
def test_interactions_malformed(tmp_path: Path, csv: str, match: str) -> None:
    path = tmp_path / "events.csv"
    path.write_text(csv)
    with pytest.raises(ValueError, match=match):
        load_interactions(path, k_core=0)


# ------------------------------------------------------------------------------------------------ split


def test_leave_one_out_split_and_truncation(tmp_path: Path) -> None:
    write_benchmark(tmp_path, "toy", ["u1 1 2 3 4 5 6", "u2 7 8 9"])
    ds = load_benchmark("toy", tmp_path)
    loo = LeaveOneOut(ds, max_len=3)
    hist, tgt = loo.train_examples()
    # u1 training part = 1 2 3 4 -> prefixes (1)->2, (1 2)->3, (1 2 3)->4; u2 training part = 7 alone -> none
    assert tgt.tolist() == [2, 3, 4]
    assert hist.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3]]
    assert loo.train_user_of_examples().tolist() == [0, 0, 0]
    vh, vt = loo.eval_examples("valid")
    assert vt.tolist() == [5, 8] and vh.tolist() == [[2, 3, 4], [0, 0, 7]]
    th, tt = loo.eval_examples("test")
    assert tt.tolist() == [6, 9] and th.tolist() == [[3, 4, 5], [0, 7, 8]]
    counts = loo.train_item_counts()
    assert counts[1:5].tolist() == [1, 1, 1, 1] and counts[7] == 1 and counts[5] == counts[9] == 0
    with pytest.raises(ValueError, match="split"):
        loo.eval_examples("train")  # type: ignore[arg-type]


def test_sub_windows_train_every_training_target_once(tmp_path: Path) -> None:
    # u1 training part = 1..8 (7 targets); u2 = 9 10 11 (2 targets); u3's training part is one item: no row
    write_benchmark(tmp_path, "toy", ["u1 1 2 3 4 5 6 7 8 90 91", "u2 9 10 11 92 93", "u3 12 94 95"])
    loo = LeaveOneOut(load_benchmark("toy", tmp_path), max_len=3)
    inputs, targets = loo.train_sequence_examples()
    assert targets.tolist() == [[6, 7, 8], [0, 10, 11]]  # the newest window only
    assert inputs.tolist() == [[5, 6, 7], [0, 9, 10]]
    inputs, targets = loo.train_sequence_examples(sub_windows=True)
    # u1 back in time: targets 6 7 8, then 3 4 5, then 2 (its input 1); u2 fits one window
    assert targets.tolist() == [[6, 7, 8], [3, 4, 5], [0, 0, 2], [0, 10, 11]]
    assert inputs.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 1], [0, 9, 10]]
    real = targets[targets > 0]
    assert sorted(real.tolist()) == sorted(loo.train_examples()[1].tolist())  # every training target once
    assert not set(real.tolist()) & {90, 91, 92, 93, 94, 95}  # never a validation or test target


def test_leave_one_out_needs_three_items(tmp_path: Path) -> None:
    write_benchmark(tmp_path, "toy", ["u1 1 2 3", "u2 1 2"])
    with pytest.raises(ValueError, match="user 'u2' has 2 items"):
        LeaveOneOut(load_benchmark("toy", tmp_path))


def test_max_users_subset_keeps_catalogue(tmp_path: Path) -> None:
    write_benchmark(tmp_path, "toy", ["u1 1 2 3", "u2 4 5 6", "u3 1 5 6"])
    full = load_benchmark("toy", tmp_path)
    sub = DataConfig(dataset="toy", root=tmp_path, max_users=2).load()
    assert sub.user_ids == ["u1", "u2"] and sub.n_items == full.n_items and sub.checksum != full.checksum


# ----------------------------------------------------------------------------------------- real data


needs_beauty = pytest.mark.skipif(
    not (data_root() / "beauty" / "sequences.txt").exists(), reason="benchmark data not present"
)


@needs_beauty
def test_beauty_stats_match_paper(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "--dataset", "beauty", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert f"{stats['avg_length']:.2f}" == "8.88"


def test_cli_reports_bad_input_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_benchmark(tmp_path, "bad", ["u1 1 z"])
    assert main(["data", "stats", "--dataset", "bad", "--data-root", str(tmp_path)]) == 2
    assert "sequences.txt:1: field item_id" in capsys.readouterr().err
