"""Tests of retention.etl: extract, validation, quarantine and mapped sources."""
