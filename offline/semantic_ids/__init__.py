"""Stage 2, semantic IDs: item text embeddings, RQ-VAE / RQ-KMeans code tuples made unique (`codes`), and the
prefix trie the constrained beam search walks."""
