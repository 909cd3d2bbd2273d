"""Messaging: message content and templates, channel choice, outbox and channel adapters."""
