"""Files: atomic writes, prepared data sets, Parquet tables and timm's config files. Imports ``plan``."""
