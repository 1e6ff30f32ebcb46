"""Judging synthetic sets: the training protocol, the evaluator, published numbers, reports."""

from ddplug.evaluate.evaluator import EvalResult, Evaluator
from ddplug.evaluate.protocol import EvalProtocol
from ddplug.evaluate.training import TrainSettings, train_classifier

__all__ = ["EvalProtocol", "EvalResult", "Evaluator", "TrainSettings", "train_classifier"]
