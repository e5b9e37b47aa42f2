"""The Forgejo gateway: the only code that talks HTTP to Forgejo, and the typed models it
parses Forgejo's JSON into.
"""
