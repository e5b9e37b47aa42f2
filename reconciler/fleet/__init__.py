"""The fleet's domain: the agent registry service, the pull queue, placement and receipt
verification.
"""
