"""Long work as resources: conversations (models talking in rounds) and collaborative reasoning.

`runs.Runs` runs each resource as one background task, under a lease in the store; the services
(`server/services/conversations.py`, `reasoning.py`) create, read and cancel resources and follow their
event logs; the orchestration itself (turns, strategies, stuck detection) lives beside this file.
"""
