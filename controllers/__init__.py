"""Controllers: registry, assignment, review, receipts — one module each, one ``reconcile(key)``.

A controller imports no other controller and not the loop; it depends only on ``reconciler``.
"""
