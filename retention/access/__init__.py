"""Access: API keys and roles, the audit trail, and the scope of every read."""
