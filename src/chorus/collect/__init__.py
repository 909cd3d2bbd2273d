"""collect: the Segment-compatible tracking API, channel inference and offline import."""
