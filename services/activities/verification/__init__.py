"""Verification of activities by the organisations that run the work, and corrections as versions."""
