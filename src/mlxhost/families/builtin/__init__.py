"""Built-in fallbacks. Each is an ordinary plugin marked ``trylast``."""
