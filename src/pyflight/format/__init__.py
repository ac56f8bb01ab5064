"""The on-disk trace format v1 (docs/format.md): writer and reader."""
