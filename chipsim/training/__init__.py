"""Training at scale: a step of a model under a parallel layout on a system (`simulate_training`)."""

from chipsim.training.step import PRECISIONS, Piece, TrainingResult, simulate_training

__all__ = ["PRECISIONS", "Piece", "TrainingResult", "simulate_training"]
