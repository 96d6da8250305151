"""Separation metrics: exact, fast BSSEval v4 (SDR, ISR, SIR, SAR) as museval computes them."""
