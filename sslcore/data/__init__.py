"""Ingestion into webdataset shards, the shard manifest, and streaming the shards back."""
