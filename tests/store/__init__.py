"""Tests of retention.store: schema, the clinic copy, lists, stored features, checks."""
