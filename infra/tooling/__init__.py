"""Tooling beside the product: the bench, the demo and the simulation.

These drive the product (flows/, tasks/) from outside, the way an operator or a load test
would; nothing in flows/ or tasks/ imports them (tests/unit/test_import_graph.py checks). The CLI
reaches them through `journeys bench|demo|simulate`, importing inside the command.

  bench/          `journeys bench`: the journey measured against the floor, the naive design,
                  one order's latency, the edge and the customer pages
  demo.py         `journeys demo`: a seeded synthetic store through the real journey
  simulate.py     `journeys simulate`: days on a frozen clock through the real flows
  demo_data.py    seeded synthetic catalog and Shopify orders (demo, bench, simulation, tests)
  simulation.py   seeded carriers and customers for the simulation
"""
