"""Conversation-level policies: context budget and summarization of older turns."""
