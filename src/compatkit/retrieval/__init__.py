"""Retrieval: nearest neighbours with one tie rule, template accuracy, recall@k, mAP, and the
cross-model compatibility matrix (query features of one model against gallery features of
another)."""

from .search import (
    BACKENDS,
    class_templates,
    cross_model_matrix,
    faiss_available,
    mean_average_precision,
    recall_at_k,
    template_accuracy,
)

__all__ = [
    "BACKENDS",
    "class_templates",
    "cross_model_matrix",
    "faiss_available",
    "mean_average_precision",
    "recall_at_k",
    "template_accuracy",
]
