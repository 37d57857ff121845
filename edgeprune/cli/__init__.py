"""edgeprune.cli: see docs/ARCHITECTURE.md for what this stage holds."""
