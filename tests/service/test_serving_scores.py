"""Which ranked rows the service accepts: padding after the history rule is fine, a non-finite real score is not."""

from __future__ import annotations

import numpy as np

from service.serving import _scores_ok


def test_padding_at_minus_inf_is_accepted_and_a_non_finite_real_score_is_not() -> None:
    ids = np.array([[3, 5, 0, 0], [3, 5, 7, 0], [3, 5, 7, 0], [3, 0, 0, 0]])
    scores = np.array([[-1.0, -2.0, -np.inf, -np.inf],   # a small catalogue: fewer items left than beams
                       [-1.0, np.nan, -3.0, -np.inf],    # NaN on a real item
                       [-1.0, -2.0, -np.inf, -np.inf],   # -inf on a real item
                       [-1.0, np.nan, -np.inf, -np.inf]])  # NaN on padding is still not -inf
    assert _scores_ok(ids, scores).tolist() == [True, False, False, False]
