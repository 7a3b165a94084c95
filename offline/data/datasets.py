"""Data pipeline: load benchmark or user-supplied interactions into one `Dataset`, k-core filter, and split
leave-one-out. Every model reads its inputs through this module so that item indexing (1-based, 0 = padding)
and the split are identical everywhere."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from scoter.paths import data_root, datasets_root

__all__ = [
    "DataConfig",
    "Dataset",
    "Item",
    "ItemColumns",
    "dataset_dir",
    "id_order",
    "LeaveOneOut",
    "file_checksum",
    "k_core_filter",
    "load_benchmark",
    "load_dataset",
    "load_interactions",
]


class ItemColumns(BaseModel):
    """Column names of an own-catalogue item table (CSV/Parquet/JSONL). `id` None: the interactions' item
    column name when the item table has it, else `item_id`."""

    id: str | None = Field(None, description="item id column (default: the interactions' item column, else item_id)")
    title: str = "title"
    brand: str = "brand"
    categories: str = Field("categories", description="a list, or one string split on `categories_sep`")
    categories_sep: str = "|"


class DataConfig(BaseModel):
    """Where the data comes from and how it is prepared. Defaults are the paper's (5-core, history 20)."""

    dataset: str | None = Field(
        None, description="benchmark folder name under data_root (beauty, sports, ...)"
    )
    root: Path | None = Field(None, description="benchmark root; None -> scoter.paths.data_root()")
    interactions_path: Path | None = Field(None, description="CSV/Parquet table instead of a benchmark")
    items_path: Path | None = Field(None, description="optional item table (CSV, Parquet or JSONL)")
    user_col: str = "user"
    item_col: str = "item"
    time_col: str = "timestamp"
    columns: ItemColumns = Field(default_factory=lambda: ItemColumns(), description="the item table's columns")
    name: str | None = Field(None, description="dataset name for an interaction table (default: its file stem)")
    k_core: int = Field(
        5, ge=0, description="iterative k-core for interaction tables (benchmarks are 5-core)"
    )
    max_len: int = Field(20, ge=1, description="history length kept for models (most recent items)")
    max_users: int | None = Field(None, ge=1, description="keep only the first N users (subset runs)")

    def load(self) -> Dataset:
        """Load the configured dataset (benchmark or interaction table), applying `max_users`."""
        if self.interactions_path is not None:
            ds = load_interactions(
                self.interactions_path,
                self.items_path,
                k_core=self.k_core,
                user_col=self.user_col,
                item_col=self.item_col,
                time_col=self.time_col,
                columns=self.columns,
                name=self.name,
            )
        elif self.dataset is not None:
            ds = load_benchmark(self.dataset, self.root)
        else:
            raise ValueError("DataConfig: set either 'dataset' or 'interactions_path'")
        return ds.subset(self.max_users) if self.max_users else ds


@dataclass(frozen=True)
class Item:
    """One catalogue item; `item_id` is the external id (what requests and the bundle's items.json use)."""

    item_id: str
    title: str = ""
    brand: str | None = None
    categories: list[str] = field(default_factory=list)
    source_id: str | None = None


@dataclass
class Dataset:
    """Users' time-ordered sequences over 1-based dense item indices (0 is padding)."""

    name: str
    user_ids: list[str]
    sequences: list[np.ndarray]
    items: list[Item]
    n_items: int
    checksum: str

    def __post_init__(self) -> None:
        if len(self.user_ids) != len(self.sequences):
            raise ValueError(
                f"{self.name}: {len(self.user_ids)} user_ids but {len(self.sequences)} sequences"
            )
        if len(self.items) != self.n_items:
            raise ValueError(f"{self.name}: {len(self.items)} items but n_items={self.n_items}")

    def item_text(self, i: int) -> str:
        """Text of item index i (1-based) for sentence encoders: title, brand, categories."""
        if not 1 <= i <= self.n_items:
            raise ValueError(f"item index {i} out of range 1..{self.n_items}")
        it = self.items[i - 1]
        parts = [it.title or f"item {it.item_id}"]
        if it.brand:
            parts.append(f"Brand: {it.brand}")
        if it.categories:
            parts.append("Categories: " + " > ".join(it.categories))
        return ". ".join(parts)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def stats(self) -> dict[str, float]:
        """Counts as reported in the paper's dataset table."""
        n_int = self.n_interactions
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n_int,
            "avg_length": n_int / max(self.n_users, 1),
            "density": n_int / max(self.n_users * self.n_items, 1),
        }

    def subset(self, max_users: int) -> Dataset:
        """First `max_users` users, same catalogue (so item indices stay valid); for quick runs and tests."""
        n = min(max_users, self.n_users)
        return Dataset(
            name=f"{self.name}[:{n}]",
            user_ids=self.user_ids[:n],
            sequences=self.sequences[:n],
            items=self.items,
            n_items=self.n_items,
            checksum=hashlib.sha256(f"{self.checksum}:first{n}".encode()).hexdigest(),
        )

    def external_ids(self) -> list[str]:
        """Entry i-1 is the external id of item index i (the bundle's items.json)."""
        return [it.item_id for it in self.items]


def file_checksum(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of the input files, so results can name exactly which data they used."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- benchmark


def _read_sequences(path: Path) -> tuple[list[str], list[list[int]]]:
    users: list[str] = []
    seqs: list[list[int]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            user = tokens[0]
            if user in seen:
                raise ValueError(f"{path}:{lineno}: field user_id: duplicate user {user!r}")
            if len(tokens) < 2:
                raise ValueError(f"{path}:{lineno}: field item_id: user {user!r} has no items")
            seq: list[int] = []
            for pos, tok in enumerate(tokens[1:], 1):
                try:
                    v = int(tok)
                except ValueError:
                    raise ValueError(
                        f"{path}:{lineno}: field item_id (position {pos}): {tok!r} is not an integer"
                    ) from None
                if v < 1:
                    raise ValueError(f"{path}:{lineno}: field item_id (position {pos}): {v} must be >= 1")
                seq.append(v)
            seen.add(user)
            users.append(user)
            seqs.append(seq)
    if not users:
        raise ValueError(f"{path}: no users")
    return users, seqs


def _as_str_list(value: object, where: str, sep: str = "|") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split(sep) if c.strip()]
    if isinstance(value, list | tuple | np.ndarray) and all(isinstance(c, str) for c in value):
        return [str(c) for c in value]
    raise ValueError(f"{where}: field categories: expected a list of strings, got {type(value).__name__}")


def _read_items_jsonl(path: Path, id_field: str = "item_id") -> dict[str, Item]:
    items: dict[str, Item] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if rec.get(id_field) is None:
                raise ValueError(f"{where}: field {id_field}: missing")
            iid = str(rec[id_field])
            if iid in items:
                raise ValueError(f"{where}: field {id_field}: duplicate item {iid!r}")
            title = rec.get("title") or ""
            brand = rec.get("brand")
            if not isinstance(title, str):
                raise ValueError(f"{where}: field title: expected a string")
            if brand is not None and not isinstance(brand, str):
                raise ValueError(f"{where}: field brand: expected a string or null")
            src = rec.get("source_id")
            items[iid] = Item(
                item_id=iid,
                title=title,
                brand=brand,
                categories=_as_str_list(rec.get("categories"), where),
                source_id=None if src is None else str(src),
            )
    return items


DATASET_META = "dataset.json"


def dataset_dir(name: str, root: Path | None = None) -> Path:
    """Folder of dataset `name`: `<root>/<name>` when a root is given, else the benchmark data root
    (`$SCOTER_DATA_DIR`), else the catalogues imported with `scoter data import` (`$SCOTER_ARTIFACTS/datasets`)."""
    if root is not None:
        return Path(root) / name
    for base in (data_root(), datasets_root()):
        if (base / name / "sequences.txt").exists():
            return base / name
    raise FileNotFoundError(
        f"dataset {name!r} not found: no {name}/sequences.txt under {data_root()} ($SCOTER_DATA_DIR) or "
        f"{datasets_root()} (own catalogues: `scoter data import --name {name} --interactions TABLE`)"
    )


def read_dataset_meta(folder: Path) -> dict:
    """`dataset.json` of an imported catalogue ({} for a benchmark folder, which has none)."""
    path = Path(folder) / DATASET_META
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or meta.get("public_id", "item_id") not in ("item_id", "source_id"):
        raise ValueError(f"{path}: field public_id: expected 'item_id' or 'source_id'")
    return meta


def load_benchmark(name: str, root: Path | None = None) -> Dataset:
    """Read `<folder>/sequences.txt` (+ optional `items.jsonl`; folder from `dataset_dir`). Item ids there are
    already 1-based; they are re-indexed densely in ascending id order (identity for the shipped benchmarks).
    An imported catalogue's `dataset.json` says `public_id: source_id`: its items then keep the shop's own ids
    (`source_id`) as their external ids, everywhere a user sees them."""
    folder = dataset_dir(name, root)
    seq_path = folder / "sequences.txt"
    if not seq_path.exists():
        raise FileNotFoundError(f"{seq_path} not found (dataset {name!r} under {folder.parent})")
    meta = read_dataset_meta(folder)
    users, raw = _read_sequences(seq_path)
    items_path = folder / "items.jsonl"
    files = [seq_path]
    catalogue: dict[str, Item] | None = None
    if items_path.exists():
        catalogue = _read_items_jsonl(items_path)
        files.append(items_path)
    if meta.get("public_id") == "source_id":
        if catalogue is None:
            raise ValueError(f"{folder / DATASET_META}: public_id source_id needs {items_path}")
        catalogue = _public_source_ids(catalogue, items_path)
    ids = sorted({v for s in raw for v in s})
    index = {v: i + 1 for i, v in enumerate(ids)}
    items: list[Item] = []
    for v in ids:
        key = str(v)
        if catalogue is None:
            items.append(Item(item_id=key))
        elif key not in catalogue:
            raise ValueError(f"{seq_path}: field item_id: item {key} is missing from {items_path}")
        else:
            items.append(catalogue[key])
    seqs = [np.fromiter((index[v] for v in s), dtype=np.int64, count=len(s)) for s in raw]
    return Dataset(str(meta.get("name", name)), users, seqs, items, len(items), file_checksum(files))


def _public_source_ids(catalogue: dict[str, Item], items_path: Path) -> dict[str, Item]:
    """Same keys (the dense ids of sequences.txt); each item's external id becomes its `source_id`."""
    seen: set[str] = set()
    out: dict[str, Item] = {}
    for key, it in catalogue.items():
        if not it.source_id:
            raise ValueError(f"{items_path}: item {key}: field source_id: missing")
        if it.source_id in seen:
            raise ValueError(f"{items_path}: item {key}: field source_id: duplicate {it.source_id!r}")
        seen.add(it.source_id)
        out[key] = Item(it.source_id, it.title, it.brand, it.categories, it.source_id)
    return out


# ----------------------------------------------------------------------------------------- interactions


def _read_table(path: Path):  # -> pandas.DataFrame
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            return pd.read_parquet(path)
        if suffix.endswith(".jsonl") or suffix.endswith(".json"):
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot parse table ({exc})") from None


def _row_label(path: Path, row: int) -> str:
    # CSV: header is line 1, so data row r (0-based) is line r + 2; other formats: report the row number.
    if path.suffix.lower() == ".csv":
        return f"{path}:{row + 2}"
    return f"{path}: row {row}"


def _require_columns(df, path: Path, cols: Sequence[str]) -> None:
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"{path}: field {c!r}: column missing (columns: {list(df.columns)})")
        missing = df[c].isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise ValueError(f"{_row_label(path, row)}: field {c!r}: empty value")


def _parse_time(series, path: Path, col: str) -> np.ndarray:
    import pandas as pd

    num = pd.to_numeric(series, errors="coerce")
    if not num.isna().any():
        return num.to_numpy(dtype=np.float64)
    parsed = pd.to_datetime(series, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if not bad.any():
        return parsed.astype("int64").to_numpy().astype(np.float64)
    neither = bad & num.isna().to_numpy()
    row = int(np.flatnonzero(neither if neither.any() else bad)[0])
    what = "is neither a number nor a date" if neither.any() else "mixes numbers and dates in one column"
    raise ValueError(f"{_row_label(path, row)}: field {col!r}: {series.iloc[row]!r} {what}")


def k_core_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of interactions kept by iterative k-core: repeat dropping users and items with fewer than
    k interactions until none is left to drop (one pass is not enough: dropping items shortens users)."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        u, i = users[keep], items[keep]
        uc, ic = Counter(u.tolist()), Counter(i.tolist())
        bad_u = {x for x, c in uc.items() if c < k}
        bad_i = {x for x, c in ic.items() if c < k}
        if not bad_u and not bad_i:
            return keep
        drop = np.isin(users, list(bad_u)) | np.isin(items, list(bad_i))
        keep &= ~drop


def _id_strings(series) -> np.ndarray:
    """Ids as strings: integral floats (a Parquet/pandas column with NaN-free ints read as float) lose the
    '.0', so 12 and 12.0 are the same item."""
    import pandas as pd

    if pd.api.types.is_float_dtype(series) and np.all(np.mod(series.to_numpy(), 1) == 0):
        series = series.astype("int64")
    return series.astype(str).to_numpy()


def id_order(ids: Iterable[str]) -> list[str]:
    """Numeric-aware order of external ids: all-integer ids sort as numbers (2 before 10), others as strings."""
    unique = set(ids)
    if unique and all(v.lstrip("+-").isdigit() for v in unique):
        return sorted(unique, key=lambda v: (int(v), v))
    return sorted(unique)


def _items_from_table(path: Path, item_col: str, columns: ItemColumns | None = None) -> dict[str, Item]:
    path = Path(path)
    cols = columns or ItemColumns()
    if path.suffix.lower() == ".jsonl":
        return _read_items_jsonl(path, id_field=cols.id or item_col)
    df = _read_table(path)
    id_col = cols.id or (item_col if item_col in df.columns else "item_id")
    if id_col not in df.columns:
        looked = repr(id_col) if cols.id else f"{item_col!r} (the interactions' item column) or 'item_id'"
        raise ValueError(f"{path}: field {id_col!r}: item id column missing: no {looked} among "
                         f"{list(df.columns)}; name it with --items-id-col")
    _require_columns(df, path, [id_col])
    ids = _id_strings(df[id_col])
    out: dict[str, Item] = {}
    for row, rec in enumerate(df.to_dict("records")):
        iid = str(ids[row])
        where = _row_label(path, row)
        if iid in out:
            raise ValueError(f"{where}: field {id_col!r}: duplicate item {iid!r}")
        title, brand = rec.get(cols.title), rec.get(cols.brand)
        out[iid] = Item(
            item_id=iid,
            title="" if title is None or title != title else str(title),
            brand=None if brand is None or brand != brand else str(brand),
            categories=_as_str_list(_nan_to_none(rec.get(cols.categories)), where, cols.categories_sep),
        )
    return out


def _nan_to_none(v: object) -> object:
    return None if isinstance(v, float) and v != v else v


def load_interactions(
    path: Path | str,
    items_path: Path | str | None = None,
    k_core: int = 5,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "timestamp",
    columns: ItemColumns | None = None,
    name: str | None = None,
) -> Dataset:
    """Read a user/item/timestamp table (CSV or Parquet), k-core filter it, and order each user's items by
    time (ties keep file order). Items get dense 1-based indices in numeric-aware external-id order
    (`id_order`); the external ids stay the table's own. `name` defaults to the file stem."""
    path = Path(path)
    df = _read_table(path)
    _require_columns(df, path, [user_col, item_col, time_col])
    if len(df) == 0:
        raise ValueError(f"{path}: no interactions")
    users = _id_strings(df[user_col])
    item_ids = _id_strings(df[item_col])
    times = _parse_time(df[time_col], path, time_col)
    keep = k_core_filter(users, item_ids, k_core)
    if not keep.any():
        raise ValueError(f"{path}: no interactions left after {k_core}-core filtering")
    users, item_ids, times = users[keep], item_ids[keep], times[keep]
    files = [path]
    catalogue: dict[str, Item] | None = None
    if items_path is not None:
        catalogue = _items_from_table(Path(items_path), item_col, columns)
        files.append(Path(items_path))
    ids = id_order(item_ids.tolist())
    index = {v: i + 1 for i, v in enumerate(ids)}
    items: list[Item] = []
    for v in ids:
        if catalogue is not None and v not in catalogue:
            raise ValueError(f"{path}: field {item_col!r}: item {v!r} is missing from {items_path}")
        items.append(catalogue[v] if catalogue is not None else Item(item_id=v))
    order = np.lexsort((np.arange(len(users)), times, users))
    users, item_ids = users[order], item_ids[order]
    idx = np.fromiter((index[v] for v in item_ids), dtype=np.int64, count=len(item_ids))
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    user_list = [str(users[s]) for s in starts]
    seqs = [a.copy() for a in np.split(idx, bounds)]
    return Dataset(name or path.stem, user_list, seqs, items, len(items), file_checksum(files))


def load_dataset(config: DataConfig) -> Dataset:
    """Convenience wrapper: `config.load()`."""
    return config.load()


# ------------------------------------------------------------------------------------------ split


def _left_pad(rows: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for r, h in enumerate(rows):
        h = h[-max_len:]
        if len(h):
            out[r, max_len - len(h) :] = h
    return out


class LeaveOneOut:
    """Leave-one-out split: last item = test target, second to last = validation target, the rest trains.
    Histories are the most recent `max_len` items, left-padded with 0, newest last."""

    def __init__(self, dataset: Dataset, max_len: int = 20) -> None:
        if max_len < 1:
            raise ValueError(f"max_len: must be >= 1, got {max_len}")
        for uid, s in zip(dataset.user_ids, dataset.sequences, strict=True):
            if len(s) < 3:
                raise ValueError(
                    f"{dataset.name}: field sequence: user {uid!r} has {len(s)} items; leave-one-out needs >= 3"
                )
        self.dataset = dataset
        self.max_len = max_len
        self.user_index = np.arange(dataset.n_users, dtype=np.int64)

    def train_sequences(self) -> list[np.ndarray]:
        """Each user's training part (sequence[:-2])."""
        return [s[:-2] for s in self.dataset.sequences]

    def train_examples(self) -> tuple[np.ndarray, np.ndarray]:
        """Every prefix of every training part: (histories [N, max_len], targets [N]); row order is user-major,
        then time. Users whose training part has one item contribute no example."""
        hist: list[np.ndarray] = []
        tgt: list[int] = []
        for s in self.train_sequences():
            for t in range(1, len(s)):
                hist.append(s[max(0, t - self.max_len) : t])
                tgt.append(int(s[t]))
        return _left_pad(hist, self.max_len), np.asarray(tgt, dtype=np.int64)

    def _windows(self, sub_windows: bool):
        """(user row, start, end) of each all-position training row: the slice train_part[start:end] gives the
        row's inputs (all but its last item) and targets (all but its first), at most `max_len` of each."""
        for u, s in enumerate(self.train_sequences()):
            for end in range(len(s), 1, -self.max_len):
                yield u, max(0, end - self.max_len - 1), end
                if not sub_windows:
                    break

    def train_sequence_examples(self, sub_windows: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """All-position training rows: (inputs [N, max_len], targets [N, max_len]) with inputs = training
        part[:-1] and targets = training part[1:], left-padded with 0 (target 0 = no loss there). By default one
        row per user, its newest `max_len` targets; `sub_windows` adds rows for the older targets of long users
        (windows of `max_len` targets going back in time, so every training target is trained once). Users whose
        training part has one item contribute no row."""
        train = self.train_sequences()
        chunks = [np.asarray(train[u][a:end], dtype=np.int64) for u, a, end in self._windows(sub_windows)]
        return _left_pad([c[:-1] for c in chunks], self.max_len), _left_pad([c[1:] for c in chunks], self.max_len)

    def train_sequence_prefix_rows(self, sub_windows: bool = False) -> np.ndarray:
        """For each position of `train_sequence_examples(sub_windows)`, the row of `train_examples()` with the
        same history and target ([N, max_len], -1 where there is no target): joins per-prefix side data such as
        a prefix's reasoning H onto all-position training."""
        lengths = [len(s) for s in self.train_sequences()]
        start = np.concatenate([[0], np.cumsum([max(n - 1, 0) for n in lengths])])
        rows = [start[u] + np.arange(a, end - 1) for u, a, end in self._windows(sub_windows)]
        out = np.full((len(rows), self.max_len), -1, dtype=np.int64)
        for r, idx in enumerate(rows):
            out[r, self.max_len - len(idx) :] = idx
        return out

    def train_user_of_examples(self) -> np.ndarray:
        """Row of `dataset.user_ids` for each row of `train_examples()` (for joining per-user side data)."""
        counts = np.array([max(len(s) - 3, 0) for s in self.dataset.sequences], dtype=np.int64)
        return np.repeat(self.user_index, counts)

    def eval_examples(self, split: Literal["valid", "test"]) -> tuple[np.ndarray, np.ndarray]:
        """One row per user, aligned with `user_index`: valid = (seq[:-2] -> seq[-2]), test = (seq[:-1] -> seq[-1])."""
        if split not in ("valid", "test"):
            raise ValueError(f"split: expected 'valid' or 'test', got {split!r}")
        cut = 2 if split == "valid" else 1
        seqs = self.dataset.sequences
        hist = [s[:-cut] for s in seqs]
        tgt = np.array([s[-cut] for s in seqs], dtype=np.int64)
        return _left_pad(hist, self.max_len), tgt

    def train_item_counts(self) -> np.ndarray:
        """Interaction count of each item index in the training parts ([n_items + 1], entry 0 unused)."""
        counts = np.zeros(self.dataset.n_items + 1, dtype=np.int64)
        for s in self.train_sequences():
            np.add.at(counts, s, 1)
        return counts

    def sequence_lengths(self) -> np.ndarray:
        """Full sequence length per user (used for the user subgroups)."""
        return np.array([len(s) for s in self.dataset.sequences], dtype=np.int64)
