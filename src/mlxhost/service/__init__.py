"""The chat service: one domain request in, events out (images, rendering, budget, stop strings)."""
