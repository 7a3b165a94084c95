"""Sentence encoding of reasoning steps into H (K x D) and of catalogue items for validation, and the user shards
that let many workers encode (and publish) H at once."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """x scaled to unit length along its last axis (zero rows stay zero): dot products become cosines."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embedding_dim(encoder: Any) -> int:
    """Output dimension (sentence-transformers >= 5 renamed the getter)."""
    getter = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(getter())


@functools.lru_cache(maxsize=1)
def sentence_encoder() -> Any:
    """The packaged MiniLM (384-d), loaded once per process."""
    from offline.semantic_ids.embeddings import load_sentence_encoder

    return load_sentence_encoder()


def embed(texts: Sequence[str], *, batch_size: int = 64, encoder: Any = None,
          progress: bool = False) -> np.ndarray:
    """L2-normalised float32 [len(texts), D]."""
    enc = encoder or sentence_encoder()
    if not texts:
        return np.zeros((0, embedding_dim(enc)), np.float32)
    return enc.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                      show_progress_bar=progress).astype(np.float32)


def pooled_cached(texts: Sequence[str], *, max_seq_length: int, batch_size: int = 64,
                  progress: bool = True) -> np.ndarray:
    """Frozen-encoder embeddings of many texts (e.g. every user's history), cached on disk by sha256 of
    (model, max_seq_length, texts): the expensive pass over all users runs once and is shared by re-runs."""
    import copy
    import hashlib

    from scoter.io import save_npy
    from scoter.paths import cache_root

    h = hashlib.sha256(f"minilm\0{max_seq_length}\0{len(texts)}\0".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = cache_root() / "reasoning" / f"pooled-{h.hexdigest()[:24]}.npy"
    if path.exists():
        log.info("pooled embeddings cache hit: %s", path)
        return np.load(path)
    enc = copy.deepcopy(sentence_encoder())
    enc.max_seq_length = max_seq_length
    out = embed(texts, batch_size=batch_size, encoder=enc, progress=progress)
    save_npy(path, out)
    return out


def history_vectors(histories: Sequence[Sequence[int]], item_emb: np.ndarray, *, max_items: int = 10,
                    decay: float = 0.8) -> np.ndarray:
    """[N, D] unit vectors: recency-weighted mean of the last `max_items` items' embeddings (1-based ids)."""
    out = np.zeros((len(histories), item_emb.shape[1]), np.float32)
    for n, h in enumerate(histories):
        recent = np.asarray(h, np.int64)[-max_items:]
        if len(recent) == 0:
            continue
        w = decay ** np.arange(len(recent) - 1, -1, -1, dtype=np.float32)  # newest item weight 1
        v = (w[:, None] * item_emb[recent - 1]).sum(0)
        out[n] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def item_embeddings(dataset: Any) -> np.ndarray:
    """Catalogue embeddings [n_items, D] (row i-1 = item i), cached on disk by offline.semantic_ids.embeddings."""
    from offline.semantic_ids.embeddings import EmbeddingConfig, ItemEmbedder

    return ItemEmbedder(EmbeddingConfig(show_progress=False), encoder=sentence_encoder()).encode_items(dataset)


def chains_to_h(chains: Sequence[Sequence[str] | None], k: int, *, batch_size: int = 64,
                encoder: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Step texts per user -> (H [N, K, D] float32, present [N] bool). A missing chain gives a zero H and
    present=False, so the fusion model sees it as absent rather than as a real (zero) reasoning."""
    enc = encoder or sentence_encoder()
    d = embedding_dim(enc)
    h = np.zeros((len(chains), k, d), np.float32)
    present = np.zeros(len(chains), bool)
    flat, where = [], []
    for i, c in enumerate(chains):
        if c is None:
            continue
        if len(c) != k:
            raise ValueError(f"chains[{i}]: {len(c)} steps, template has K={k}")
        present[i] = True
        for j, step in enumerate(c):
            flat.append(step)
            where.append((i, j))
    if flat:
        vecs = embed(flat, batch_size=batch_size, encoder=enc)
        rows, cols = zip(*where, strict=True)
        h[list(rows), list(cols)] = vecs
    return h, present


# -- shards ---------------------------------------------------------------------------------------------------
# Rows per block: a multiple of the encoder student's inference chunk (4096 rows on the item-vector path, see
# EncoderStudent.predict) and of power-of-two publish batches, so a shard feeds the student exactly the row groups
# an unsharded run does (float results depend on the group: this is what makes the bytes equal).
SHARD_BLOCK = 16_384
SHARD_FILE = "shard.json"


class Shard(BaseModel):
    """Shard `index` of `count`: the users in blocks of `block` rows (in user_ids order) with block % count ==
    index. Round-robin blocks keep shards within one block of each other in size; with a block that is a whole
    number of publish batches, a shard's progress markers are those an unsharded run writes for the same rows."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1)
    block: int = Field(SHARD_BLOCK, ge=1)

    @model_validator(mode="after")
    def _index_below_count(self) -> Shard:
        if self.index >= self.count:
            raise ValueError(f"shard: index {self.index} is not below count {self.count}")
        return self

    @classmethod
    def parse(cls, spec: str, block: int = SHARD_BLOCK) -> Shard:
        """'i/n' (0-based i), e.g. '0/4'; 'n' alone means the index comes from JOB_COMPLETION_INDEX (a
        Kubernetes Indexed Job)."""
        import os

        head, sep, tail = spec.partition("/")
        try:
            if sep:
                return cls(index=int(head), count=int(tail), block=block)
            return cls(index=int(os.environ["JOB_COMPLETION_INDEX"]), count=int(head), block=block)
        except KeyError:
            raise ValueError(f"--shard {spec!r}: no index given and JOB_COMPLETION_INDEX is not set") from None
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValueError(f"--shard {spec!r}: expected INDEX/COUNT, e.g. 0/4") from None

    def owns(self, rows: np.ndarray) -> np.ndarray:
        """Mask of the global row numbers this shard owns."""
        return (np.asarray(rows) // self.block) % self.count == self.index

    def rows(self, n_rows: int) -> np.ndarray:
        """This shard's global row numbers, ascending."""
        all_rows = np.arange(n_rows)
        return all_rows[self.owns(all_rows)]

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"


def encode_shard(h_of_rows: Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]], user_ids: Sequence[str],
                 out_dir: Path, shard: Shard, splits: Sequence[str] = ("train", "valid", "test")) -> Path:
    """Write shard `shard`'s H folder under `out_dir/<shard name>/`: H and present of every split for its rows
    (`h_of_rows(split, rows)`), its user ids, and shard.json (rows, count, block) last. A shard whose shard.json
    exists is complete and skipped; a killed shard redoes only the splits it had not written."""
    from scoter import h_folder
    from scoter.io import write_json

    folder = Path(out_dir) / shard.name
    if (folder / SHARD_FILE).exists():
        log.info("%s: complete, skipped", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = shard.rows(len(user_ids))
    for split in splits:
        if h_folder.h_path(folder, split).exists():
            continue
        t0 = time.perf_counter()
        h, present = h_of_rows(split, rows)
        h_folder.write_split(folder, split, h, present)
        took = time.perf_counter() - t0
        log.info("%s H_%s: %d users in %.1fs (%.1f users/s)", shard.name, split, len(rows), took,
                 len(rows) / max(took, 1e-9))
    h_folder.write_user_ids(folder, [user_ids[r] for r in rows])
    write_json(folder / SHARD_FILE, {"index": shard.index, "count": shard.count, "block": shard.block,
                                     "n_rows": len(user_ids), "rows": rows.tolist()})
    return folder


def read_shard(folder: Path | str) -> tuple[Shard, np.ndarray]:
    """(shard, its global row numbers) of a complete shard folder."""
    from scoter.io import read_json

    path = Path(folder) / SHARD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the shard is not complete (rerun its encode)")
    doc = read_json(path)
    return Shard(index=doc["index"], count=doc["count"], block=doc["block"]), np.asarray(doc["rows"], np.int64)


def merge_shards(out_dir: Path | str, count: int, dest: Path | str,
                 splits: Sequence[str] = ("train", "valid", "test")) -> None:
    """Assemble the `count` shard folders under `out_dir` into one H folder at `dest` (the row order of an
    unsharded run), for fusion training and evaluation. Fails naming a missing or foreign shard."""
    from scoter import h_folder

    parts = []
    for i in range(count):
        shard, rows = read_shard(Path(out_dir) / Shard(index=i, count=count).name)
        if shard.count != count:
            raise ValueError(f"{out_dir}: shard {i} was made as one of {shard.count}, not {count}")
        parts.append((Path(out_dir) / shard.name, rows))
    n = sum(len(r) for _, r in parts)
    ids: list[str | None] = [None] * n
    for folder, rows in parts:
        for r, u in zip(rows, h_folder.read_user_ids(folder) or [], strict=True):
            ids[r] = u
    if any(u is None for u in ids):
        raise ValueError(f"{out_dir}: the {count} shards do not cover rows 0..{n - 1}")
    for split in splits:
        first, _ = h_folder.read_split(parts[0][0], split)
        H = np.zeros((n, *first.shape[1:]), first.dtype)
        present = np.zeros(n, bool)
        for folder, rows in parts:
            H[rows], present[rows] = h_folder.read_split(folder, split)
        h_folder.write_split(dest, split, H, present)
    h_folder.write_user_ids(dest, [str(u) for u in ids])


def student_h_of_rows(student: Any, dataset: Any, cfg: Any) -> Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`h_of_rows` for `encode_shard` from a trained encoder student: the inputs `pipeline.precompute_h` uses,
    for the given rows only (train and valid share the input seq[:-2] and are computed once)."""
    from offline.reasoning import pipeline

    cached: dict[str, np.ndarray] = {}

    def h_of_rows(split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = "test" if split == "test" else "train_valid"
        if key not in cached:
            histories = pipeline.split_histories(dataset, split)
            texts, pooled = pipeline._student_inputs(dataset, [histories[r] for r in rows], cfg)
            if pooled is None and not cfg.train_encoder:
                pooled = pooled_cached(texts, max_seq_length=cfg.max_seq_length, batch_size=cfg.encode_batch_size)
            cached[key] = student.predict(texts, progress=True, pooled=pooled)
        return cached[key], np.ones(len(rows), bool)

    return h_of_rows
