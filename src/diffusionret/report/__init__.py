"""The results report: paper-style markdown tables (`tables`), the seed paper's numbers (`paper`), figures."""
