"""Casework: a case manager's day with the list, and the outreach they record."""
