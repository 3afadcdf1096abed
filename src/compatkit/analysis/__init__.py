"""Analysis of models and runs: Definition 1 per model pair, stationarity, the Monte Carlo of
Theorem 1, the K = 3 simplex demo, and their figures."""
