"""Feed-forward: ``swiglu`` and the whole ``ffn`` MLP.

CONTRACT (to be completed with math, reference and cases):

``swiglu(gate, up) -> out``: ``gate, up: [tokens, intermediate]``, out = silu(gate) * up in dtype.

``ffn(x, w_gate_up, w_down) -> out``: ``x: [tokens, hidden]``,
``w_gate_up: [2 * intermediate, hidden]`` (rows [0, intermediate) are gate_proj, the rest up_proj,
nn.Linear layout), ``w_down: [hidden, intermediate]``; out = down(silu(gate(x)) * up(x)).
"""

OPS = []
