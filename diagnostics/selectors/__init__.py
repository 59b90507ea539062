"""Reads: one module per domain, always scoped to the user asking, so no view builds an
unscoped queryset."""
