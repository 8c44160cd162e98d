"""Private helpers of `prune-channels`: coupling groups, pruning plans and the slicing itself."""
