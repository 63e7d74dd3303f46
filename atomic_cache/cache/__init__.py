"""The Valkey side: the client, the script registry that loads ``lua/*.lua`` once, and
the cache source that builds keys, calls one script and (de)serialises."""
