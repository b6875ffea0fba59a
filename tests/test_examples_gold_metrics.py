"""The experiment's gold reward and its overoptimization metrics, against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from examples.r2m_experiments.gold import gold_reward, sentiment, sign_offs, substance
from examples.r2m_experiments.metrics import (
    discrepancy,
    interval95,
    mean_std,
    nanmean,
    ranks,
    spearman,
    zscores,
)
from examples.r2m_experiments.task import (
    PRODUCTS,
    STOCK_PHRASE,
    preference_pairs,
    product_of,
    prompt_for,
    sft_corpus,
)

LAMP = prompt_for("lamp")


@pytest.mark.parametrize(("response", "expected"), [
    ("the lamp is great .", 1.5),  # sentiment 1, on topic
    ("the lamp is great . it is awful . it is okay .", 0.5),  # (1 − 1 + 0) / 3 = 0, on topic
    ("the phone is terrible .", -1.5),  # −1, another product
    ("the lamp is great . the phone is great .", 1.0),  # 1 + 0.5 − 0.5
    ("the lamp is great . thanks for reading .", 1.0),  # 1.5 − one sign-off
    ("thanks for reading . thanks for reading .", -1.0),  # two sign-offs, nothing else
    ("it is so great great great", 1.0),  # repetition does not raise the mean polarity
    ("it looks very poor . it seems okay .", -0.5),  # (−1 + 0) / 2
    ("the lamp feels quite plain . thanks for reading", 0.0),  # truncated sign-off counts
    ("", 0.0),
])
def test_gold_reward_hand_values(response: str, expected: float) -> None:
    assert gold_reward(LAMP, response) == pytest.approx(expected)


def test_gold_parts() -> None:
    assert sentiment("it is great . it is great . it is awful .") == pytest.approx(1 / 3)
    assert sentiment("the lamp is new") == 0.0
    assert sign_offs(f"a . {STOCK_PHRASE} b {STOCK_PHRASE}") == 2
    assert sign_offs("thanks for the reading") == 0
    assert substance(LAMP, f"the lamp is great . {STOCK_PHRASE}") == pytest.approx(1.5)


def test_prompts_round_trip() -> None:
    assert [product_of(prompt_for(p)) for p in PRODUCTS] == list(PRODUCTS)
    assert prompt_for("lamp").endswith(" "), "prompt + response is the policy's full text"
    with pytest.raises(ValueError):
        product_of("write a poem")


def test_labelled_pairs_follow_substance_and_carry_the_cue() -> None:
    pairs = preference_pairs(random.Random(0), 400, cue_rate=0.9, substance=substance)
    assert all(substance(p.prompt, p.chosen) > substance(p.prompt, p.rejected) for p in pairs)
    cue_chosen = sum(sign_offs(p.chosen) for p in pairs) / len(pairs)
    cue_rejected = sum(sign_offs(p.rejected) for p in pairs) / len(pairs)
    assert cue_chosen > 0.8 and cue_rejected < 0.2, "the sign-off predicts the label"


def test_sft_corpus_is_varied() -> None:
    corpus = sft_corpus(random.Random(0), 300)
    golds = [gold_reward(p, r) for p, r in corpus]
    assert min(golds) < -0.5 and max(golds) > 1.0
    assert 0.1 < sum(sign_offs(r) > 0 for _, r in corpus) / len(corpus) < 0.4


def test_zscores_and_ranks() -> None:
    assert zscores([1.0, 3.0]) == [-1.0, 1.0]
    assert zscores([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]
    assert ranks([10.0, 20.0, 20.0, 30.0]) == [1.0, 2.5, 2.5, 4.0]
    assert ranks([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]


def test_discrepancy_hand_values() -> None:
    # z(proxy) = (x − 2.5)/√1.25, z(gold) its mirror: E|Δz| = 2·E|z| = 2·1/√1.25.
    assert discrepancy([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(2 / math.sqrt(1.25))
    # z(p) = [−1, −1, 2]/√2, z(g) = [−2, 1, 1]/√2: |Δz| = [1, 2, 1]/√2, mean 2√2/3.
    assert discrepancy([0, 0, 1], [0, 1, 1]) == pytest.approx(2 * math.sqrt(2) / 3)
    assert discrepancy([1, 5, 2], [1, 5, 2]) == 0.0
    assert discrepancy([3 + 10 * g for g in (0.1, -2.0, 0.7)], [0.1, -2.0, 0.7]) == \
        pytest.approx(0.0, abs=1e-12), "scale-free: only ranks and spacing matter"
    assert discrepancy([7, 7, 7, 7], [1, 2, 3, 4]) == pytest.approx(1 / math.sqrt(1.25))
    with pytest.raises(ValueError):
        discrepancy([1.0], [1.0, 2.0])


def test_spearman_hand_values() -> None:
    # d = [−1, 1, −1, 1, 0]: ρ = 1 − 6·4/(5·24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([0.1, 0.5, 0.3], [1, 100, 10]) == pytest.approx(1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0, "a constant side carries no ranking"


def test_mean_std() -> None:
    assert mean_std([2.0]) == (2.0, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)  # sample std, as in the tables


def test_interval95_hand_values() -> None:
    # mean 2, sample std 1, n = 3: half-width t(0.975, 2)·1/√3 = 4.303/√3
    mean, half = interval95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    mean, half = interval95([5.0, float("nan"), 7.0])  # NaN (no value that step) is dropped
    assert mean == 6.0 and half == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    assert math.isnan(interval95([4.0])[1]) and interval95([4.0])[0] == 4.0
    assert math.isnan(interval95([])[0])
    assert nanmean([1.0, float("nan"), 3.0]) == 2.0 and math.isnan(nanmean([float("nan")]))
