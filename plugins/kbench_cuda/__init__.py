"""kbench cuda backend plugin."""
