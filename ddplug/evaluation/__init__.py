"""Judging synthetic sets: the training protocol, the evaluator, published numbers, reports."""

from ddplug.evaluation.evaluator import EvalResult, Evaluator
from ddplug.evaluation.protocol import EvalProtocol
from ddplug.evaluation.training import TrainSettings, train_classifier

__all__ = ["EvalProtocol", "EvalResult", "Evaluator", "TrainSettings", "train_classifier"]
