"""The `datasets` builder for Derm-T2IM (GeneratorBasedBuilder) and its export to a Hub-ready parquet folder."""
