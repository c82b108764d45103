"""Programmes (VMC, AYRG, NYVP, ...): the national umbrellas that projects run under."""
