"""Submission packaging: stage run logs as an MLCommons tree, TEST06, truncation, validation.

Works on files only; imports no torch and no other harness package.
"""
