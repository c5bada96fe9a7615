"""Hybrid retrieval (BM25 + dense + graph expansion), fusion, evaluation and answers with citations."""
