"""The bottom floor: domain values, errors, units, limits and model facts; imports nothing above it."""
