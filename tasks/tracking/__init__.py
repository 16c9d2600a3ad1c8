"""Shipment tracking: shipments and carrier events in; shipped → delivered and what follows."""
