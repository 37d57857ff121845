"""Device profiles, one TOML file each (read by edgeprune.targets)."""
