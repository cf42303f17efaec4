"""Tests of retention.clinic: the data contract, instruments and the synthetic clinic."""
