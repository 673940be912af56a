"""Evaluation: embedding, retrieval, bootstrap intervals, the evaluation report."""
