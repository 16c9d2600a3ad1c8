"""`journeys bench`: the journey measured against the floor, the naive design and one order.

story.py runs N seeded orders through every stage of the real flows; floor.py measures what
the same work costs at the bare minimum; baseline.py runs the naive per-order design;
latency.py times one order through a running server and worker.
"""
