"""``python -m mlxhost.models.starter [qwen gemma]``: build the starter/test models.

The same command as ``python -m mlxhost.models.starter.builder``; this is the one a
serving process runs as a child (``mlxhost.models.starter.child``), so the builder
module is imported under its own name there.
"""

from mlxhost.models.starter.builder import main

raise SystemExit(main())
