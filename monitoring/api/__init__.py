"""The bot's HTTP API (``/api/v1/``), its clients and tokens, and signed event callbacks."""
