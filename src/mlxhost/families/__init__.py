"""Model families: hooks, the plugin manager, Family, templating, tool-call parsing, built-in fallbacks."""
