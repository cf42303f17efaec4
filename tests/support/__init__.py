"""Helpers the tests share: databases and services of their own, clinics, apps and keys, and
the published list the reasons and scoring tests check."""
