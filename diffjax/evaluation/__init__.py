"""Evaluation: the FID Inception network, a domain classifier, metrics and fingerprinted
reference statistics, and the `Evaluator` the eval job and the training loop share
(`diffjax.evaluation.evaluator`)."""

from diffjax.evaluation.metrics import (frechet_distance, inception_score,
                                        kernel_inception_distance, precision_recall, statistics)
