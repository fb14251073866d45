"""Stage 5: the `datasets` dataset (parquet export, A1111 import) behind `load_dataset("dermt2im")`."""
