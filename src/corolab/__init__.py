"""corolab: the package that the book's chapters, notebooks and labs import.

The book builds each piece step by step, then imports it from here, so the reader sees a piece built once
and used everywhere after.
"""

__version__ = "0.1.0"
