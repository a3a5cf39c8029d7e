"""Finite-network transfer: models, training recipes, training and evaluation."""
