"""The ground every stage stands on: configuration, typed errors naming the stage and whose fault,
bounded waits, Ctrl-C, the processes the harness started, the cache, disk and memory checks,
the distribution and the host architecture.
"""
