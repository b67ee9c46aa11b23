"""Pure core: tokens, quantiser, vocabulary, window, sampling, voicing, clocks.

Nothing here does I/O, reads clocks, starts threads or imports TensorFlow.
"""
