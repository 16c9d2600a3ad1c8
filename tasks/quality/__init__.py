"""Data quality: declarative GX suites run once per batch, bad rows routed to quarantine."""
