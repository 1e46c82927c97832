"""kbench backend 'liger': Liger-Kernel's Triton kernels behind kbench's op contracts."""
