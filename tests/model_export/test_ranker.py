"""The torch-free runner: bad inputs are refused with a message naming the input, before ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from scoter.ranker import BundleRanker, InputError, RankerConfig


@pytest.fixture(scope="module")
def ranker(bundle) -> BundleRanker:
    return BundleRanker(bundle, RankerConfig(intra_op_threads=1))


def _good(ranker: BundleRanker, batch: int = 3) -> dict[str, np.ndarray]:
    m = ranker.manifest
    history = np.zeros((batch, m.max_history), dtype=np.int64)
    history[:, -3:] = np.arange(1, 3 * batch + 1).reshape(batch, 3)
    return {
        "history": history,
        "history_mask": history > 0,
        "reasoning": np.ones((batch, m.reasoning_steps, m.reasoning_dim), dtype=np.float32),
        "reasoning_present": np.array([True, False, True][:batch]),
    }


def test_valid_batch_ranks_real_items_best_first(ranker):
    ids, scores = ranker.rank(**_good(ranker))
    beam = ranker.manifest.default_beam
    assert ids.shape == (3, beam) and ids.dtype == np.int64
    assert scores.shape == (3, beam) and scores.dtype == np.float32
    assert ((ids >= 1) & (ids <= ranker.manifest.n_items)).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    assert ranker.provider == "CPUExecutionProvider"  # this sandbox's onnxruntime has no CUDA provider
    ext = ranker.external_ids(ids)
    assert ext[0][0] == ranker.items[ids[0, 0] - 1]


def _bad_cases(m):
    b, t, k, d = 3, m.max_history, m.reasoning_steps, m.reasoning_dim
    return [
        ("history", {"history": np.zeros((b, t), dtype=np.int32)}, "dtype must be int64"),
        ("history", {"history": np.zeros(t, dtype=np.int64)}, "expected 2 dimensions"),
        ("history", {"history": [[1, 2]] * b}, "expected a numpy array"),
        ("history", {"history": np.full((b, t), m.n_items + 1)}, "0..n_items"),
        ("history", {"history": np.full((b, t), -1)}, "0..n_items"),
        ("history", {"history": np.ones((b, t + 1), dtype=np.int64),
                     "history_mask": np.ones((b, t + 1), dtype=bool)}, "max_history"),
        ("history_mask", {"history_mask": np.ones((b, t), dtype=np.int64)}, "dtype must be bool"),
        ("history_mask", {"history_mask": np.ones((b, t - 1), dtype=bool)}, "!= history shape"),
        ("reasoning", {"reasoning": np.ones((b, k, d), dtype=np.float64)}, "dtype must be float32"),
        ("reasoning", {"reasoning": np.ones((b, k + 1, d), dtype=np.float32)}, r"\(batch, K, D\)"),
        ("reasoning", {"reasoning": np.ones((b, k, d - 1), dtype=np.float32)}, r"\(batch, K, D\)"),
        ("reasoning", {"reasoning": np.full((b, k, d), np.nan, dtype=np.float32)}, "NaN"),
        ("reasoning_present", {"reasoning_present": np.ones(b + 1, dtype=bool)}, r"\(batch,\)"),
        ("reasoning_present", {"reasoning_present": np.ones(b, dtype=np.float32)}, "dtype must be bool"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_input_is_refused_naming_it(ranker, case):
    name, override, message = _bad_cases(ranker.manifest)[case]
    feeds = {**_good(ranker), **override}
    with pytest.raises(InputError, match=message) as info:
        ranker.rank(**feeds)
    assert str(info.value).startswith(name)


def test_empty_batch_is_refused(ranker):
    feeds = {k: v[:0] for k, v in _good(ranker).items()}
    with pytest.raises(InputError, match="at least one user"):
        ranker.rank(**feeds)


def test_unavailable_provider_is_refused(bundle):
    with pytest.raises(ValueError, match="providers"):
        BundleRanker(bundle, RankerConfig(providers=["NoSuchExecutionProvider"]))


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_reduced_precision_variants_use_the_same_interface(bundle, variant):
    ranker = BundleRanker(bundle, RankerConfig(variant=variant, intra_op_threads=1))
    ids, scores = ranker.rank(**_good(ranker))
    assert ids.shape == scores.shape == (3, ranker.manifest.default_beam) and scores.dtype == np.float32
    assert ((ids >= 1) & (ids <= ranker.manifest.n_items)).all()
