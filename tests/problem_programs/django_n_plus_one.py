"""Planted (case 8): a Django view lists books with their authors and reads
``book.author.name`` in a loop: one query for the books, then one per book for its author
(an N+1: 1,501 queries per request). Django on sqlite, served by a threaded wsgiref
server on loopback with pyflight's WSGI middleware."""

import os
import sys

from django.http import HttpResponse
from django.urls import path

sys.path.insert(0, os.path.dirname(__file__))
import _django_shop

Author, Book = _django_shop.configure(urlconf=__name__)


def book_list(request: object) -> HttpResponse:
    lines = []
    for book in Book.objects.order_by("id"):
        lines.append(f"{book.title} by {book.author.name}")  # the planted N+1: one query per book
    return HttpResponse("\n".join(lines))


def health(request: object) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("books/", book_list), path("health/", health)]


def main() -> None:
    _django_shop.create_tables(Author, Book, books=1500)
    _django_shop.serve(["/books/", "/health/"] * 4)
