"""Token data: the shard format, writer and reader (`shards`), and loaders for each objective."""

from lmforge.data.shards import TokenShards, build_shards

__all__ = ["TokenShards", "build_shards"]
