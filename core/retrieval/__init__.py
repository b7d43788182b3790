"""Retrieval: the retriever and reranker registries, fusion, KILT rows and metrics, embeddings, the vector
store and calibration."""
