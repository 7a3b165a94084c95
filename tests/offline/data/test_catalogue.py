"""Own catalogues: the table schema's column options, numeric-aware ids, and `scoter data import`'s folder, which
every stage then loads by name with the shop's ids as the public ids."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from offline.data.catalogue import ImportConfig, import_catalogue
from offline.data.datasets import (
    DataConfig,
    ItemColumns,
    dataset_dir,
    id_order,
    load_benchmark,
    load_interactions,
)
from scoter.cli import main


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    data, art = tmp_path / "data", tmp_path / "art"
    data.mkdir()
    monkeypatch.setenv("SCOTER_DATA_DIR", str(data))
    monkeypatch.setenv("SCOTER_ARTIFACTS", str(art))
    return data, art


def _orders(ids: list[object]) -> pd.DataFrame:
    """Three users, each buying every id once, in list order."""
    rows = [(u, i, t) for u in ("u1", "u2", "u3") for t, i in enumerate(ids)]
    return pd.DataFrame(rows, columns=["customer", "product", "ts"])


def test_id_order_is_numeric_when_every_id_is_an_integer() -> None:
    assert id_order(["10", "9", "2"]) == ["2", "9", "10"]
    assert id_order(["B10", "B9", "A2"]) == ["A2", "B10", "B9"]


def test_parquet_integer_ids_keep_their_decimal_strings(tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    _orders([10, 9, 100]).to_parquet(path)
    ds = load_interactions(path, k_core=0, user_col="customer", item_col="product", time_col="ts", name="shop")
    assert ds.name == "shop" and ds.external_ids() == ["9", "10", "100"]
    assert [ds.items[i - 1].item_id for i in ds.sequences[0]] == ["10", "9", "100"]


def test_item_table_columns_are_options(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    _orders(["SKU-1", "SKU-2", "SKU-3"]).to_csv(orders, index=False)
    items = tmp_path / "items.parquet"
    pd.DataFrame({"pid": ["SKU-1", "SKU-2", "SKU-3"], "name": ["Blocks", "Fox", "Kite"],
                  "tags": ["toys;wood", "toys", ""]}).to_parquet(items)
    cols = ItemColumns(id="pid", title="name", categories="tags", categories_sep=";")
    ds = load_interactions(orders, items, k_core=0, user_col="customer", item_col="product", time_col="ts",
                           columns=cols)
    assert ds.item_text(1) == "Blocks. Categories: toys > wood"
    with pytest.raises(ValueError, match="item id column missing: no 'product' .* or 'item_id'.*--items-id-col"):
        load_interactions(orders, items, k_core=0, user_col="customer", item_col="product", time_col="ts")


def test_import_round_trip_keeps_the_shops_ids(roots: tuple[Path, Path], tmp_path: Path) -> None:
    _, art = roots
    orders = tmp_path / "orders.csv"
    _orders(["SKU 7", "SKU-10", "é-1"]).to_csv(orders, index=False)
    cfg = DataConfig(interactions_path=orders, user_col="customer", item_col="product", time_col="ts", k_core=0)
    folder, ds = import_catalogue(ImportConfig(name="toyshop", data=cfg))
    assert folder == art / "datasets" / "toyshop" == dataset_dir("toyshop")
    again = load_benchmark("toyshop")  # how every stage reads it: by name
    assert again.name == "toyshop" and again.external_ids() == ds.external_ids() == ["SKU 7", "SKU-10", "é-1"]
    assert [again.items[i - 1].item_id for i in again.sequences[1]] == ["SKU 7", "SKU-10", "é-1"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["public_id"] == "source_id" and meta["stats"]["users"] == 3
    with pytest.raises(ValueError, match="already exists"):
        import_catalogue(ImportConfig(name="toyshop", data=cfg))


def test_import_refuses_bad_names_users_and_benchmark_clashes(roots: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = roots
    (data / "beauty").mkdir()
    (data / "beauty" / "sequences.txt").write_text("u1 1 2 3\n")
    orders = tmp_path / "orders.csv"
    _orders(["a", "b", "c"]).to_csv(orders, index=False)
    cfg = DataConfig(interactions_path=orders, user_col="customer", item_col="product", time_col="ts", k_core=0)
    for name, match in (("beauty", "is a benchmark"), ("../x", "must be letters")):
        with pytest.raises(ValueError, match=match):
            import_catalogue(ImportConfig(name=name, data=cfg))
    spaced = tmp_path / "spaced.csv"
    df = _orders(["a", "b", "c"])
    df.loc[df.customer == "u2", "customer"] = "user two"
    df.to_csv(spaced, index=False)
    with pytest.raises(ValueError, match="'user two' is empty or contains whitespace"):
        import_catalogue(ImportConfig(name="spaced", data=cfg.model_copy(update={"interactions_path": spaced})))


def test_cli_import_then_stats_by_name(roots: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    orders = tmp_path / "orders.parquet"
    _orders(["P-3", "P-1", "P-2"]).to_parquet(orders)
    assert main(["data", "import", "--name", "pq", "--interactions", str(orders), "--user-col", "customer",
                 "--item-col", "product", "--time-col", "ts", "--k-core", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["example_item_ids"] == ["P-1", "P-2", "P-3"] and out["users"] == 3
    assert main(["data", "stats", "--dataset", "pq", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["interactions"] == 9
    assert main(["data", "stats", "--dataset", "nowhere"]) == 2
    assert "scoter data import" in capsys.readouterr().err
