"""edgeprune.measure: see docs/ARCHITECTURE.md for what this stage holds."""
