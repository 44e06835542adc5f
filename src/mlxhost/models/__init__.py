"""Models: the registry (facts resolved once per version), locating and fetching files, the starter model."""
