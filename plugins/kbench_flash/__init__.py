"""kbench flash backend plugin."""
