"""First-party projections of a small order domain (see projections/orders.py)."""
