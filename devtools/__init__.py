"""Development and test tooling that starts real servers on this machine (no Django imports)."""
