"""The machinery behind ``run_demo.py``: processes, Redis, progress, scenario, summary.

It starts the example's services the way their README says to start them, as separate
processes, and never imports them.
"""
