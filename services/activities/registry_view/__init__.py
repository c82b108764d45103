"""What activities knows of the registry: a projection of its events, and the registry asked on a miss."""
