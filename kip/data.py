"""Datasets for kernel-based distillation: loaders, preprocessing and the Dataset container.

>>> from kip import data
>>> ds = data.load("fashion_mnist", preprocess="zca", n_train=1000, n_test=500, seed=0)
>>> ds.x_train.shape, ds.one_hot(ds.y_train).shape
((1000, 28, 28, 1), (1000, 10))

Names known to :func:`load` are listed in :data:`DATASETS`; any other arrays go through
:func:`from_arrays`. Preprocessing (``'none'``, ``'standardize'``, regularised ``'zca'`` as the KIP
reference code does it, ``'zca_centered'``) is fitted on the training split only and can be inverted and saved without pickle.
"""

from kip._src.data.dataset import Dataset
from kip._src.data.dataset import RawSplits
from kip._src.data.dataset import class_balanced_indices
from kip._src.data.dataset import from_arrays
from kip._src.data.cifar import read_cifar10
from kip._src.data.cifar import read_cifar100
from kip._src.data.idx import read_idx
from kip._src.data.preprocess import KINDS as PREPROCESS_KINDS
from kip._src.data.preprocess import Preprocessing
from kip._src.data.preprocess import fit
from kip._src.data.sources import DATASETS
from kip._src.data.sources import ENV_VAR
from kip._src.data.sources import load
from kip._src.data.sources import resolve_data_dir

__all__ = (
    "DATASETS",
    "Dataset",
    "ENV_VAR",
    "PREPROCESS_KINDS",
    "Preprocessing",
    "RawSplits",
    "class_balanced_indices",
    "fit",
    "from_arrays",
    "load",
    "read_cifar10",
    "read_cifar100",
    "read_idx",
    "resolve_data_dir",
)
