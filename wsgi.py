"""The WSGI entry point: ``gunicorn --worker-class gthread --threads 64 wsgi:app``.

One process only, unless the hub spans processes: with the embedded SQLite store and the
in-process hub, readers in one worker would not hear appends made in another.
"""

from app import create_app, maintenance

app = create_app()
maintenance.start(app.extensions["runstream"])
