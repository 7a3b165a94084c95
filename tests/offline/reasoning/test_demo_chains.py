"""The demo shows the hindsight teacher's chains (labelled as such) and rejects degenerate steps."""

from __future__ import annotations

from offline.pipeline.demo import _load_chains
from scoter.io import write_json


def test_demo_reads_hindsight_chains_first_and_names_their_inputs(tmp_path) -> None:
    steps = ["Analyze purchase history", "Item Recommendation"]
    write_json(tmp_path / "teacher_chains_oracle.json", {"steps": steps, "records": [
        {"user": "u1", "steps": ["OPI polish twice, then a top coat", "another OPI shade"]},
        {"user": "u2", "steps": None}]})
    write_json(tmp_path / "teacher_chains.json", {"steps": steps, "records": [
        {"user": "u1", "steps": ["plain", "plain"]}, {"user": "u3", "steps": ["serum buyer", "a moisturiser"]}]})
    chains = _load_chains(tmp_path)
    label, shown = chains["u1"]
    assert "hindsight" in label and "seq[-3]" in label
    assert shown == ["Analyze purchase history: OPI polish twice, then a top coat",
                     "Item Recommendation: another OPI shade"]
    assert "u2" not in chains and chains["u3"][0] == "teacher, training history"
