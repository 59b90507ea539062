"""Writes: one module per domain, one function per use case. Each takes the acting
user, validates, changes the database in one transaction and records the audit event in it."""
