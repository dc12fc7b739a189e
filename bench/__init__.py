"""The hottask-sync benchmark suite (see bench/README.md)."""
