"""The demo and (as it lands) the benchmark harness; knows everything, known by nothing."""
