"""The seeded taxonomy of activity types (what kind of work a volunteer did)."""
