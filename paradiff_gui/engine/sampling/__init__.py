"""The synchronized loop (``sampler``): every tile at every step, predictions fused on the canvas,
one scheduler step on the whole canvas. Coherence methods (jitter, global context, bridges) live
here, one module each."""
