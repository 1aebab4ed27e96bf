"""Core data: the request, the tile plan, blend windows, events, cancellation, model descriptions.

Plain data and arithmetic (stdlib + numpy); imports nothing else of the engine and never torch."""
