"""`make bench`: speed, memory and size of the teacher and the students, side by side.

``benchmarks/run.py`` is the entry point; the modules here hold its pieces (the stream,
the models and their exports, timing, memory, the runtime cost breakdown, the report).
"""
