"""Stage 4, the jobs that drive stages 1-3: the main run, the migration experiments with
their scenario library and report, the benchmark and the soak.
"""
