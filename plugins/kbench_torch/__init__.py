"""kbench torch backend plugin: SDPA, torch.compile of the references, torch native fused ops."""
