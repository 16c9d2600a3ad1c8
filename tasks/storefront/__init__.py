"""What the customer pages read and record (flows/pages serves them): one module per page.

Nothing here imports Prefect, FastAPI or reads the clock: the page passes `now` in.
"""
