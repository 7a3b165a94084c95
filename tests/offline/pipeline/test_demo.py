"""The demo's subset writer: the subset it writes must be a valid benchmark that the normal loader reads."""

from __future__ import annotations

import json
from pathlib import Path

from offline.data.datasets import load_benchmark
from offline.pipeline.demo import write_subset


def _write_source(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    (src / "sequences.txt").write_text("u1 5 9 5 7 3\nu2 9 2 4 6 8\nu3 1 2 3 4 5\n")
    items = [{"item_id": i, "source_id": f"A{i}", "title": f"item {i}", "brand": None, "categories": ["c"],
              "text_quality": "t"} for i in range(1, 10)]
    (src / "items.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    return src


def test_subset_keeps_first_users_and_renumbers_their_items(tmp_path: Path) -> None:
    src = _write_source(tmp_path)
    dest = tmp_path / "data" / "tiny"
    info = write_subset(src, dest, max_users=2)
    assert info == "2 users, 8 items"
    ds = load_benchmark("tiny", root=tmp_path / "data")
    assert ds.user_ids == ["u1", "u2"]
    assert ds.n_items == 8
    # u1's items 5 9 5 7 3 become 1 2 1 3 4 (first-seen order), u2's 9 2 4 6 8 reuse 9 -> 2
    assert ds.sequences[0].tolist() == [1, 2, 1, 3, 4]
    assert ds.sequences[1].tolist() == [2, 5, 6, 7, 8]
    # titles follow their items through the renumbering
    assert ds.items[0].title == "item 5" and ds.items[1].title == "item 9"
    # a second call leaves the finished subset alone (resumable demo)
    assert write_subset(src, dest, max_users=1) == "exists"
    assert load_benchmark("tiny", root=tmp_path / "data").n_users == 2
