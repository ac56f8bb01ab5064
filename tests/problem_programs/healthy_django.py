"""Healthy: the same Django bookshop as django_n_plus_one, but the view fetches each
book's author in the same query (``select_related``): one query per request."""

import os
import sys

from django.http import HttpResponse
from django.urls import path

sys.path.insert(0, os.path.dirname(__file__))
import _django_shop

Author, Book = _django_shop.configure(urlconf=__name__)


def book_list(request: object) -> HttpResponse:
    books = Book.objects.select_related("author").order_by("id")
    return HttpResponse("\n".join(f"{book.title} by {book.author.name}" for book in books))


def book_detail(request: object, book_id: int) -> HttpResponse:
    book = Book.objects.select_related("author").get(id=book_id)
    return HttpResponse(f"{book.title} by {book.author.name}")


urlpatterns = [path("books/", book_list), path("books/<int:book_id>/", book_detail)]


def main() -> None:
    _django_shop.create_tables(Author, Book, books=1500)
    _django_shop.serve(["/books/", "/books/7/", "/books/42/"] * 4)
