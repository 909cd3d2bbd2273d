"""Measurement: the event lake and the analytics that read it."""
