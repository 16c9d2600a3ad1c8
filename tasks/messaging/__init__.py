"""Messaging: money/date formatting, template rendering, the outbox and its transports."""
