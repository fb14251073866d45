"""Stage 1: real dermoscopy ingestion (ISIC, HAM10000, folders), leakage-safe splits, hair removal, 512 px."""
