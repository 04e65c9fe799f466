"""The rules: how each torch operation moves channel labels through the graph (one module per kind of operation)."""
