"""Retrieval: nearest neighbours with one tie rule, template accuracy, recall@K, mAP, and the
cross-model compatibility matrix (query features of one model against gallery features of
another)."""

from .matrix import cross_model_matrix
from .measures import class_templates, mean_average_precision, recall_at_k, template_accuracy
from .neighbours import BACKENDS, faiss_available, stable_topk, top_k

__all__ = [
    "BACKENDS",
    "class_templates",
    "cross_model_matrix",
    "faiss_available",
    "mean_average_precision",
    "recall_at_k",
    "stable_topk",
    "template_accuracy",
    "top_k",
]
