"""early_exposure.forgetting against hand-counted transitions (Harmon et al. 2025)."""

import math

import numpy as np
import pytest

from early_exposure.forgetting import forgetting_metrics, transition_counts


def test_hand_case():
    before = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1]   # acc_b = 0.6
    after = [1, 0, 0, 1, 1, 0, 0, 1, 0, 1]    # acc_a = 0.5
    assert transition_counts(before, after) == {"1->1": 4, "1->0": 2, "0->1": 1, "0->0": 3}
    m = forgetting_metrics(before, after, k=4)
    assert m["acc_before"] == pytest.approx(0.6) and m["acc_after"] == pytest.approx(0.5)
    assert m["forgetting"] == pytest.approx(0.2)
    assert m["forgetting_relative"] == pytest.approx(2 / 6)
    assert m["backward_transfer"] == pytest.approx(0.1)
    assert m["backward_transfer_relative"] == pytest.approx(1 / 4)
    chance = 0.4 * 0.5 / 3
    assert m["forgetting_chance_adjusted"] == pytest.approx(0.2 - chance)
    assert m["backward_transfer_chance_adjusted"] == pytest.approx(max(0.0, 0.1 - chance))


def test_chance_adjustment_clips_at_zero_and_edge_cases():
    # 2-way choice, mostly wrong: chance term (0.75 * 0.75) exceeds the raw forgetting
    m = forgetting_metrics([1, 0, 0, 0], [0, 0, 1, 0], k=2)
    assert m["forgetting"] == pytest.approx(0.25)
    assert m["forgetting_chance_adjusted"] == 0.0
    m0 = forgetting_metrics(np.zeros(3, bool), np.ones(3, bool))
    assert math.isnan(m0["forgetting_relative"]) and m0["backward_transfer_relative"] == 1.0
    assert "forgetting_chance_adjusted" not in m0


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        transition_counts([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        transition_counts([2, 0], [1, 0])
    with pytest.raises(ValueError, match="k"):
        forgetting_metrics([1], [0], k=1)
