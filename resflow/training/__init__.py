"""Offline training of a model gallery: labels, regions, buckets, decoders, evaluation."""
