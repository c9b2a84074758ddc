"""Full-system test harness for KVM hypercalls on Armv8.

Data flows one way:
    config -> sources -> patches -> kbuild -> images -> machine (L1) -> nested (L2)
           -> workload -> trace -> analysis -> report / grading
"""

__version__ = "0.1.0"
