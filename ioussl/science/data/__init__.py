"""The stored data: preprocessing, CT checks, the slice store, grids, splits, synthetic cases."""
