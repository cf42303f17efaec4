"""Tests of retention.casework: caseloads and outreach."""
