"""Tests of retention.db: engines and the bulk paths."""
