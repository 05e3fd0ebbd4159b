"""What the gateway runs with: its settings (``settings``: the environment and the TOML
file, validated), its Redis client (``redisclient``) and the checks made before it
serves (``preflight``). Imports nothing else of the app."""
