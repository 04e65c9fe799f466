"""Infrastructure that knows no pruning: kill-safe files and folders (atomic, fsops), output locks, the
``prunekit.json`` record (meta), shard-index path checks (shards), the one timing routine (latency), the
machine's memory (machine) and calling a model on any batch form (calling). Imports nothing from the rest of
prunekit; ``core`` and everything above may import it."""
