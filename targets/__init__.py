"""Device profiles, one TOML file each (read by edgeprune.run.targets; installed as edgeprune.targets_data)."""
