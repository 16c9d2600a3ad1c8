"""journeys units of work: one module per stage, the store, messaging, quality and archive."""
