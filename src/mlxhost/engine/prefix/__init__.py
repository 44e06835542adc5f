"""The KV prefix cache: trie + LRU, the disk tier, image prompts."""
