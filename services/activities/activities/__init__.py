"""Activity logs: what a volunteer did, for which project, where, for how long and for how many people."""
