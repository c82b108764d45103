"""Volunteers: registration, search, duplicates and merge, erasure, CSV import."""
