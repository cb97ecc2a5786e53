"""Learning test of the masked-modelling methods (see test_method_learning.py): on digits, MAE and
BEiT beat the kNN accuracy of the same backbone at random initialisation, within a small CPU budget."""

from __future__ import annotations

import pytest
from learning_helpers import MASKED, Digits, check_method_learns, load_digits, one_thread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return load_digits(tmp_path_factory)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", MASKED)
def test_masked_method_beats_its_random_init_knn(name: str, digits: Digits) -> None:
    with one_thread():
        check_method_learns(name, digits)
