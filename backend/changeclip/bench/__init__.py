"""Speed benchmarks: network throughput, text-side cost, end-to-end GeoTIFF → GeoTIFF.

Every optimised figure is measured next to a naive baseline of the same network in the
same run (batch 1, fp32, prompts tokenised and encoded for every pair, reading, computing
and writing one tile after the other), so each comes with a measured ratio. Run it with
``changeclip bench`` (``make bench`` on the CPU, ``scripts/gpu_bench.py`` on a GPU).
"""
