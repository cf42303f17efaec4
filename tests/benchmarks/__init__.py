"""Tests of benchmarks/ code."""
