"""Tests of retention.evaluation: held-out metrics, bootstrap, fairness, report."""
