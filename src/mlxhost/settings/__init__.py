"""Settings: the one table (flags, env vars, TOML, docs) and the config file."""
