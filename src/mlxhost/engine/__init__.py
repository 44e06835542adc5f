"""The MLX engine: loading, steps, batching, kernels, sampling, constrained decoding."""
