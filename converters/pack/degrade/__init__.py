"""Degraded copies of a converted artifact (weight noise, int8 bit flips, perturbed quantization scales), one
module per file format behind ``weights_of``; used by the predictive accuracy test (converters.pack.predictive)."""

from converters.pack.degrade.kinds import KINDS, Degradation, degrade, kinds_for
from converters.pack.degrade.weights import WeightFile, WeightTensor, weights_of

__all__ = ["KINDS", "Degradation", "WeightFile", "WeightTensor", "degrade", "kinds_for", "weights_of"]
