"""Evaluation: the FID Inception network, a domain classifier, metrics and fingerprinted
reference statistics. The jobs that use them live in diffjax/evaluate.py."""

from diffjax.evaluation.metrics import (frechet_distance, inception_score,
                                        kernel_inception_distance, precision_recall, statistics)
