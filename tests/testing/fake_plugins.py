"""Sources of fake plugin modules: each a bug a conformance check must catch, or none."""

WRONG_RMSNORM = """
    import kbench
    import torch


    def rmsnorm(x, weight, eps):
        # The bug: the weight is never applied.
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


    @kbench.hookimpl
    def register_backends(register):
        register("rmsnorm", "wrongnorm", rmsnorm)
"""

SCRIBBLING_RMSNORM = """
    import kbench
    from kbench.ops.norm import rmsnorm_reference


    def rmsnorm(x, weight, eps):
        out = rmsnorm_reference(x, weight, eps)
        x.zero_()  # the bug: x is not the op's to write
        return out


    @kbench.hookimpl
    def register_backends(register):
        register("rmsnorm", "scribbler", rmsnorm)
"""

PICKY_RMSNORM = """
    import kbench
    import torch
    from kbench.ops.norm import rmsnorm_reference


    def supports(case, dtype, device):
        return None if dtype == torch.float32 else "float32 only"


    @kbench.hookimpl
    def register_backends(register):
        register("rmsnorm", "picky", rmsnorm_reference, supports=supports)
"""

BROKEN_ON_IMPORT = """
    raise RuntimeError("this plugin cannot be imported")
"""
