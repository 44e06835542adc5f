"""Embedding and rerank models: loaded beside the chat model, batched on the MLX thread.

``facts`` recognises them and reads their pooling (no MLX); ``mlx_model`` runs
the forward pass (MLX, worker thread only); ``batcher`` groups the inputs of
concurrent requests into bounded forward passes, one per worker turn;
``slots`` loads, counts and unloads them; ``service`` turns a request's inputs
into vectors or scores.
"""
