"""A small class-conditional pixel-space DiT trained on scikit-learn's digits, shipped for demos and tests.

Importing this package loads nothing: weights are read by `load_pipeline()`, the judge is fitted on
first use of `judge.accuracy()`.
"""

from dit_cache_fx.digits.judge import accuracy, digits_16x16, predict
from dit_cache_fx.digits.pipeline import NUM_CLASSES, DigitsPipeline, load_pipeline, weights_dir

__all__ = ["NUM_CLASSES", "DigitsPipeline", "accuracy", "digits_16x16", "load_pipeline", "predict", "weights_dir"]
