"""A small order app on eventstore: asyncio appends, read-your-writes, and a live list over SSE.

See README.md in this folder; :func:`~examples.orders_app.app.create_orders_app` builds the app.
"""
