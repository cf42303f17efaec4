"""Tests of retention.access: keys and the audit log."""
