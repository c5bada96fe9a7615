"""Corpus: loaders and parsers, PII redaction, token-aware chunking, the object store, incremental ingest."""
