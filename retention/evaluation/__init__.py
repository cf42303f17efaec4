"""Evaluation: held-out metrics against baselines, fairness, the gate, the report and card."""
