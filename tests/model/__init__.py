"""Tests of retention.model: training, booster, artifacts, calibration, registry, drift."""
