"""Offline evaluation and benchmarks of expertgate guards and routers."""
