"""Benchmark suite: this project against plain APScheduler and django-apscheduler.

Run ``python -m bench --help``; docs/benchmarks.md says what each scenario
measures and how.
"""
