"""Skills assessments: an instrument taken by a volunteer at a phase (baseline, midline, endline)."""
