"""Stage 3, observe: the workload in L2, its trace, L1's own trace (the ground truth),
the analysis of both, and references into the kernel tree used.
"""
