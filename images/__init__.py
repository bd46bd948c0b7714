"""The project's images and their build (``images/build.py``)."""
