"""Face-unlock door lock for the Raspberry Pi.

Conventions used everywhere in this package:

* a frame is a ``numpy.ndarray`` of dtype uint8, shape (H, W, 3), RGB order;
* a box is ``(x1, y1, x2, y2)`` in pixels of the frame it came from, float32;
* landmarks are a (5, 2) float32 array of (x, y) pixels: left eye, right eye,
  nose, left mouth corner, right mouth corner (left/right as seen in the image);
* an embedding is a unit-length float32 vector of shape (128,).
"""

__version__ = "0.1.0"
