"""Device profiles, one TOML file each (read by edgeprune.targets; installed as edgeprune.targets_data)."""
