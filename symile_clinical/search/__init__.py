"""Search: the candidate CXR index (exact inner product, optional faiss)."""
