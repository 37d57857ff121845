"""edgeprune.io: see docs/ARCHITECTURE.md for what this stage holds."""
