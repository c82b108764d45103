"""Enrolments of volunteers in projects."""
