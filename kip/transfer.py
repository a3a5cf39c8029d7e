"""Transfer of distilled sets to finite networks: models, training recipes, evaluation.

>>> from kip import data, transfer
>>> ds = data.load("digits")
>>> result = transfer.evaluate_random(ds, 10, model="convnet", recipe="dc", restarts=5)
>>> print(result)  # "mean ± std % (5 restarts)"

Models follow one contract: Flax linen modules, ``model.apply(variables, x, train=False)`` on
NHWC float32 images returns ``(n, num_classes)`` logits (``norm='batch'`` trains with
``mutable=['batch_stats']``). Recipes are frozen dataclasses (``'kip'``, ``'dc'``, ``'dsa'``). Evaluation
augmentation defaults to the reference code's (``reference_augment``; ``dc_augment_fn`` is
DC's, ``kip.baselines.augment`` DSA's).
"""

from kip._src.dc_augment import DCAugParams
from kip._src.dc_augment import augment_fn as dc_augment_fn
from kip._src.transfer.models import AlexNetSmall
from kip._src.transfer.models import ConvNet
from kip._src.transfer.models import FC
from kip._src.transfer.models import LeNet
from kip._src.transfer.models import MODEL_NAMES
from kip._src.transfer.models import ResNet
from kip._src.transfer.models import get_model
from kip._src.transfer.recipes import RECIPE_NAMES
from kip._src.transfer.recipes import Recipe
from kip._src.transfer.recipes import apply_overrides
from kip._src.transfer.recipes import get_recipe
from kip._src.transfer.train import AugmentFn
from kip._src.transfer.train import TransferResult
from kip._src.transfer.train import accuracy
from kip._src.transfer.train import evaluate
from kip._src.transfer.train import evaluate_full
from kip._src.transfer.train import evaluate_random
from kip._src.transfer.train import make_optimizer
from kip._src.transfer.train import reference_augment
from kip._src.transfer.train import train
from kip._src.transfer.train import training_targets
from kip._src.transfer.ntk import ntk_learning_rate
from kip._src.transfer.ntk import ntk_max_eigenvalue
from kip._src.transfer.tuning import Tune
from kip._src.transfer.tuning import grid_edges

__all__ = (
    "AlexNetSmall",
    "AugmentFn",
    "ConvNet",
    "DCAugParams",
    "FC",
    "LeNet",
    "MODEL_NAMES",
    "RECIPE_NAMES",
    "Recipe",
    "ResNet",
    "TransferResult",
    "Tune",
    "accuracy",
    "apply_overrides",
    "dc_augment_fn",
    "evaluate",
    "evaluate_full",
    "evaluate_random",
    "get_model",
    "get_recipe",
    "grid_edges",
    "make_optimizer",
    "ntk_learning_rate",
    "ntk_max_eigenvalue",
    "reference_augment",
    "train",
    "training_targets",
)
