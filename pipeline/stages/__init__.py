"""One module per prepare stage: its frozen config, its backend registry and its shard function."""
