"""Learning test: on digits, each method's defaults beat the kNN accuracy of the same backbone at
random initialisation, within a small CPU budget (contrastive and distillation methods here; the
masked-modelling ones, which need the most epochs, in test_method_learning_masked.py).

Training runs the framework-free core the Ray worker loop uses (``TrainStream`` -> the method's
own view transform -> ``train_epoch`` with per-step schedules, EMA updates, clipping and freezing);
features for kNN go through ``sslcore.inference.Encoder`` as in evaluation and serving. Only the
budget (backbone, batch, epochs) is set here; every ``method.*`` value is the method's default.
"""

from __future__ import annotations

import pytest
from learning_helpers import BUDGETS, MASKED, TEST_VIT, Digits, check_method_learns, load_digits, one_thread

from sslcore.methods import METHODS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return load_digits(tmp_path_factory)


def test_every_method_has_a_budget() -> None:
    assert set(BUDGETS) == set(METHODS.names())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(set(BUDGETS) - set(MASKED)))
def test_method_beats_its_random_init_knn(name: str, digits: Digits) -> None:
    with one_thread():
        check_method_learns(name, digits)


@pytest.mark.timeout(300)
def test_moco_v2_learns_on_the_tiny_vit(digits: Digits) -> None:
    """A ViT has no BatchNorm; without one in its head MoCo v2 fell to kNN 0.29 there (random init
    0.47). Its default puts BatchNorm in the head on ViTs (docs/methods.md)."""
    with one_thread():
        check_method_learns("moco_v2", digits, (TEST_VIT, 8))


@pytest.mark.timeout(300)
def test_dino_learns_on_the_tiny_vit(digits: Digits) -> None:
    """Without KoLeo, DINO's student settled at the uniform output on the tiny ViT (loss log K, kNN
    0.46 against random init 0.47) whatever its temperatures, centering or head; with the reference
    ViT learning rate alone it still did (0.49). Its ViT defaults add DINOv2's KoLeo term and a
    quarter of train.lr (docs/methods.md): a margin that either one alone does not reach."""
    with one_thread():
        check_method_learns("dino", digits, (TEST_VIT, 8), margin=0.06)
