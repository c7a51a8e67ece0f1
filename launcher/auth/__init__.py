"""SMART Backend Services for `bulk-export serve`: the client registry, scopes, client assertions, access tokens."""
