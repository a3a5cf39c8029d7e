"""Kernel ridge regression: ``predict(kernel_fn, x_support, y_support, x_target, reg)``."""

from kip._src.krr import (DEFAULT_REG, KernelFn, accuracy, kernel_matrix, mse, predict,
                          predict_from_kernels, ridge, solve)

__all__ = ["DEFAULT_REG", "KernelFn", "accuracy", "kernel_matrix", "mse", "predict",
           "predict_from_kernels", "ridge", "solve"]
