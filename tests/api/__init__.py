"""Tests of the JSON API (retention.api): routes, access, audit, FHIR, caches, metrics."""
