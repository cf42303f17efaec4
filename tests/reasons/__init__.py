"""Tests of retention.reasons: explain, history and phrases."""
