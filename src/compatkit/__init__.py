"""compatkit: compatible representation learning with stationary (d-Simplex) features.

Implements the method of Biondi, Pernici, Ricci, Del Bimbo, "Stationary
Representations: Optimally Approximating Compatibility and Implications for
Improved Model Replacements", CVPR 2024 (arXiv 2405.02581), the IAM-CL2R
protocol, its baselines and the evaluation that decides whether a model update
is compatible.
"""

__version__ = "0.1.0"
