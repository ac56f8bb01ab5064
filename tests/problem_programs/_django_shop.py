"""A small Django bookshop (settings, models, a threaded wsgiref server on loopback) for
the Django problem programs: the program defines ``urlpatterns`` and its views."""

from __future__ import annotations

import os
import tempfile
import threading
import urllib.request
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def configure(urlconf: str) -> tuple[Any, Any]:
    """Settings for a sqlite file database; the ``Author`` and ``Book`` model classes."""
    db = os.path.join(tempfile.mkdtemp(prefix="pyflight-django-"), "shop.sqlite3")
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=urlconf,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db}},
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
    )
    django.setup()
    from django.db import models

    class Author(models.Model):
        name = models.CharField(max_length=100)

        class Meta:
            app_label = "shop"

    class Book(models.Model):
        title = models.CharField(max_length=200)
        author = models.ForeignKey(Author, on_delete=models.CASCADE)

        class Meta:
            app_label = "shop"

    return Author, Book


def create_tables(*model_classes: Any, books: int) -> None:
    from django.db import connection

    author_cls, book_cls = model_classes
    with connection.schema_editor() as editor:
        for cls in model_classes:
            editor.create_model(cls)
    authors = author_cls.objects.bulk_create([author_cls(name=f"author {i}") for i in range(books)])
    book_cls.objects.bulk_create([book_cls(title=f"book {i}", author=a) for i, a in enumerate(authors)])
    connection.close()


def serve(paths: list[str]) -> None:
    """Serve the Django app (a task per request, named by Django's route) and GET each path."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.urls import resolve

    from pyflight.integrations.wsgi import PyflightWSGIMiddleware

    app = PyflightWSGIMiddleware(
        WSGIHandler(), endpoints=False, route=lambda environ: str(resolve(environ["PATH_INFO"]).route)
    )
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, name="wsgi-server", daemon=True)
    serving.start()
    for path in paths:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
            assert response.status == 200, response.status
            response.read()
    server.shutdown()
    server.server_close()
