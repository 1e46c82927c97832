"""kbench triton backend plugin."""
