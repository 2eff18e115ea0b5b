"""The instructor side of qkv: release exercises, grade submissions, export grades.

Entry point: ``python -m autograder --help``.
"""
