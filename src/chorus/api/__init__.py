"""HTTP interfaces: the tracking API (/v1) and the admin API (/api)."""
