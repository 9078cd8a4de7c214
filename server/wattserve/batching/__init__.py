"""Dynamic batching: scheduling (queue, clock, futures) apart from tensor maths (merge, split)."""
