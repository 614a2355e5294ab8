"""Entrypoint kinds: what a worker consumes and what running one message of each means.

Each module declares the queues and bindings of one kind and its run step; the
worker's pipeline (:mod:`busapp.runtime.pipeline`) runs every kind through the same
stages, so no kind can skip the size, signature, replay or reply-target checks.
"""
