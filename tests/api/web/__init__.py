"""Tests of the case managers' pages (retention.api.web)."""
