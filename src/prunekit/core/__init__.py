"""Method-agnostic machinery: scope, masks, patterns, allocation, statistics, sparse storage."""
