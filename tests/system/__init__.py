"""System tests: the fault matrix, stateful runs, restarts, a power day, docs, architecture."""
