"""The method, in plain PyTorch: sensitivities, the insensitivity shrink, masks, the threshold
search, the pruning schedules and the exact compaction of a pruned network. Nothing here reads a
config file, writes a file or prints: it imports only torch (and Torch-Pruning's dependency graph,
for the compaction) and ``sensreg.errors``, so any training loop can use it."""
