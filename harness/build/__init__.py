"""Stage 1, build: kernel sources (tarball, tree, git), patches, kernel profiles, the
kernel build (worktrees, ccache and its preprocessor key), build-log reading and the sandbox for
untrusted builds.
"""
