"""Projects: run by an organisation under a programme, in places, on focus areas, between dates."""
