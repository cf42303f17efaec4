"""Reasons: the model's contributions by family, put in words from the client's rows."""
