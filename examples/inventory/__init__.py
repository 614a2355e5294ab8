"""The inventory example: an App split over two modules (see app.py)."""
