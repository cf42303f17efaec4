"""Tests of retention.features: feature families, labels, no leakage."""
