"""The method, in plain PyTorch: sensitivities, the insensitivity shrink, masks, the threshold
search and the pruning schedules. Nothing here reads a config file, writes a file or prints:
it imports only torch and ``sensreg.errors``, so any training loop can use it."""
